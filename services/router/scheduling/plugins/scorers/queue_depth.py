"""queue-depth-scorer: favours engines with fewer turns queued or running.

Reads: `EngineState.queue_depth` = max(in_flight, running + waiting) of the latest load report
plus `pending`, the turns the router sent since that report (so a burst between two reports
spreads). Normalised across the candidates, smoothed:

    score = half / (depth - min_depth + half)

The least loaded candidate scores 1.0; one `half_score_depth` deeper scores 0.5. Unlike a
min-max scale, one extra turn is a small difference between busy engines (10 vs 11) and a
larger one between idle ones (0 vs 1), so cache affinity wins over tiny load differences while
a deep queue still pushes turns elsewhere.

Parameters:
  half_score_depth (float > 0, default 8): depth above the least loaded that halves the score.
"""

from __future__ import annotations

from typing import ClassVar

import pydantic

from services.common.config import StrictModel
from services.router.registry import EngineState
from services.router.scheduling.interfaces import (
    QUEUE_DEPTH_SCORER,
    PluginContext,
    RoutingRequest,
)


class Params(StrictModel):
    half_score_depth: float = pydantic.Field(8.0, gt=0)


class QueueDepthScorer:
    type_name: ClassVar[str] = QUEUE_DEPTH_SCORER
    decision_reason: ClassVar[str] = "load"

    def __init__(self, name: str, params: Params, ctx: PluginContext) -> None:
        self.name = name
        self.half = params.half_score_depth

    def score(self, req: RoutingRequest, engines: list[EngineState]) -> dict[str, float]:
        if not engines:
            return {}
        depths = [e.reported_depth + e.pending for e in engines]  # queue_depth, inlined
        half = self.half
        base = min(depths) - half
        return {e.engine_id: half / (d - base) for e, d in zip(engines, depths, strict=True)}
