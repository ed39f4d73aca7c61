"""not-draining-filter: keeps engines that are not draining.

Reads: `draining` from the latest load report. A draining engine finishes its in-flight
turns and takes no new ones; it stays registered (and in Envoy's cluster) until it leaves.

Parameters: none.
"""

from __future__ import annotations

from typing import ClassVar

from services.common.config import StrictModel
from services.router.registry import EngineState
from services.router.scheduling.interfaces import (
    NOT_DRAINING_FILTER,
    PluginContext,
    RoutingRequest,
)


class Params(StrictModel):
    pass


class NotDrainingFilter:
    type_name: ClassVar[str] = NOT_DRAINING_FILTER

    def __init__(self, name: str, params: Params, ctx: PluginContext) -> None:
        self.name = name

    def filter(self, req: RoutingRequest, engines: list[EngineState]) -> list[EngineState]:
        return [e for e in engines if not e.draining]

    def reason(self, req: RoutingRequest, engine: EngineState) -> str:
        return "draining"
