"""fits-context-filter: keeps engines whose context holds the prompt plus max_tokens.

Reads: the request's prompt length and `max_tokens`, the engine's `max_model_len` (0, unknown,
passes). Engines of one pool may run with different context lengths (e.g. smaller on L4).

Parameters: none.
"""

from __future__ import annotations

from typing import ClassVar

from services.common.config import StrictModel
from services.router.registry import EngineState
from services.router.scheduling.interfaces import (
    FITS_CONTEXT_FILTER,
    PluginContext,
    RoutingRequest,
)


class Params(StrictModel):
    pass


class FitsContextFilter:
    type_name: ClassVar[str] = FITS_CONTEXT_FILTER

    def __init__(self, name: str, params: Params, ctx: PluginContext) -> None:
        self.name = name

    def filter(self, req: RoutingRequest, engines: list[EngineState]) -> list[EngineState]:
        need = len(req.prompt_token_ids) + req.max_tokens
        return [e for e in engines if e.max_model_len == 0 or need <= e.max_model_len]

    def reason(self, req: RoutingRequest, engine: EngineState) -> str:
        p = len(req.prompt_token_ids)
        return (
            f"prompt {p} + max_tokens {req.max_tokens} = {p + req.max_tokens} tokens "
            f"> max_model_len {engine.max_model_len}"
        )
