"""healthy-filter: keeps engines that say they are serving and are not stale.

Reads: `serving` from the latest load report (false while loading, after a fatal error, or
while draining) and `stale`, which the registry's sweep sets when an engine has been silent for
longer than `router.stale_after_seconds` (the router's own stalls not counted) and clears on the
engine's next report. The sweep owns the clock, so a pick made right after the router wakes from
a stall does not mistake the router's silence for the engines'.

Parameters: none.
"""

from __future__ import annotations

from typing import ClassVar

from services.common.config import StrictModel
from services.router.registry import EngineState
from services.router.scheduling.interfaces import HEALTHY_FILTER, PluginContext, RoutingRequest


class Params(StrictModel):
    pass


class HealthyFilter:
    type_name: ClassVar[str] = HEALTHY_FILTER

    def __init__(self, name: str, params: Params, ctx: PluginContext) -> None:
        self.name = name
        self._clock = ctx.clock
        self._stale_after = ctx.registry.stale_after

    def filter(self, req: RoutingRequest, engines: list[EngineState]) -> list[EngineState]:
        return [e for e in engines if e.serving and not e.stale]

    def reason(self, req: RoutingRequest, engine: EngineState) -> str:
        if engine.stale:
            silent = self._clock() - engine.last_report_at
            return f"silent for {silent:.1f}s > {self._stale_after:g}s"
        if engine.draining:
            return "draining"
        return "not serving (loading or failed)"
