"""healthy-filter: keeps engines that say they are serving and reported recently.

Reads: `serving` from the latest load report (false while loading, after a fatal error, or
while draining) and `last_report_at`. An engine silent for longer than `stale_after_seconds`
leaves the candidates at once, before the registry's sweep removes it.

Parameters:
  stale_after_seconds (float > 0, optional): silence allowed; default the registry's stale_after.
"""

from __future__ import annotations

from typing import ClassVar

import pydantic

from services.common.config import StrictModel
from services.router.registry import EngineState
from services.router.scheduling.interfaces import HEALTHY_FILTER, PluginContext, RoutingRequest


class Params(StrictModel):
    stale_after_seconds: float | None = pydantic.Field(None, gt=0)


class HealthyFilter:
    type_name: ClassVar[str] = HEALTHY_FILTER

    def __init__(self, name: str, params: Params, ctx: PluginContext) -> None:
        self.name = name
        self._clock = ctx.clock
        self._stale_after = params.stale_after_seconds or ctx.registry.stale_after

    def filter(self, req: RoutingRequest, engines: list[EngineState]) -> list[EngineState]:
        cutoff = self._clock() - self._stale_after
        return [e for e in engines if e.serving and e.last_report_at >= cutoff]

    def reason(self, req: RoutingRequest, engine: EngineState) -> str:
        silent = self._clock() - engine.last_report_at
        if silent > self._stale_after:
            return f"silent for {silent:.1f}s > {self._stale_after:g}s"
        if engine.draining:
            return "draining"
        return "not serving (loading or failed)"
