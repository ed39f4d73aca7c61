"""kv-utilization-filter: keeps engines whose KV cache is not (nearly) full.

Reads: `kv_usage` (kv_cache_usage) from the latest load report, in [0, 1]. An engine above the cap
would preempt running sequences or queue the turn until blocks free up.

Parameters:
  max_usage (float in (0, 1], default 0.95): engines with usage above it are removed.
"""

from __future__ import annotations

from typing import ClassVar

import pydantic

from services.common.config import StrictModel
from services.router.registry import EngineState
from services.router.scheduling.interfaces import (
    KV_UTILIZATION_FILTER,
    PluginContext,
    RoutingRequest,
)


class Params(StrictModel):
    max_usage: float = pydantic.Field(0.95, gt=0, le=1)


class KvUtilizationFilter:
    type_name: ClassVar[str] = KV_UTILIZATION_FILTER

    def __init__(self, name: str, params: Params, ctx: PluginContext) -> None:
        self.name = name
        self.max_usage = params.max_usage

    def filter(self, req: RoutingRequest, engines: list[EngineState]) -> list[EngineState]:
        cap = self.max_usage
        return [e for e in engines if e.kv_usage <= cap]

    def reason(self, req: RoutingRequest, engine: EngineState) -> str:
        return f"kv utilization {engine.kv_usage:.2f} > {self.max_usage:g}"
