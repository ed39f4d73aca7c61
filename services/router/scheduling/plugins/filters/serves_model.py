"""serves-model-filter: keeps engines that serve the requested model name (and version).

Reads: the request's `model` (served name, aliases already resolved) and `model_version` (the
arm of a versioned model; "" for any), and the engine's `model` and `model_version` from its
registration. A pool normally serves one model; this guards a pool whose engines are
mid-rollout to another served name, since an engine rejects any name but its own. An empty
request model matches every engine.

Parameters: none.
"""

from __future__ import annotations

from typing import ClassVar

from services.common.config import StrictModel
from services.router.registry import EngineState
from services.router.scheduling.interfaces import (
    SERVES_MODEL_FILTER,
    PluginContext,
    RoutingRequest,
)


class Params(StrictModel):
    pass


class ServesModelFilter:
    type_name: ClassVar[str] = SERVES_MODEL_FILTER

    def __init__(self, name: str, params: Params, ctx: PluginContext) -> None:
        self.name = name

    def filter(self, req: RoutingRequest, engines: list[EngineState]) -> list[EngineState]:
        model, version = req.model, req.model_version
        if not model:
            return engines
        if version:
            return [e for e in engines if e.model == model and e.model_version == version]
        return [e for e in engines if e.model == model]

    def reason(self, req: RoutingRequest, engine: EngineState) -> str:
        if engine.model == req.model:
            return f"serves version {engine.model_version!r}, not {req.model_version!r}"
        return f"serves model {engine.model!r}, not {req.model!r}"
