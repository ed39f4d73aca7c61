"""kv-utilization-scorer: favours engines with free KV-cache blocks.

Reads: `kv_usage` (kv_cache_usage) from the latest load report. Score = 1 - usage: an engine
with free blocks takes a long prompt without evicting cached prefixes or preempting running
sequences.

Parameters: none.
"""

from __future__ import annotations

from typing import ClassVar

from services.common.config import StrictModel
from services.router.registry import EngineState
from services.router.scheduling.interfaces import (
    KV_UTILIZATION_SCORER,
    PluginContext,
    RoutingRequest,
)


class Params(StrictModel):
    pass


class KvUtilizationScorer:
    type_name: ClassVar[str] = KV_UTILIZATION_SCORER
    decision_reason: ClassVar[str] = "kv"

    def __init__(self, name: str, params: Params, ctx: PluginContext) -> None:
        self.name = name

    def score(self, req: RoutingRequest, engines: list[EngineState]) -> dict[str, float]:
        return {e.engine_id: 1.0 - e.kv_usage for e in engines}
