"""session-affinity-scorer: keeps a conversation on the engine that served its last turn.

Reads: the session table (session id → engine of the last routed turn), and that engine's queue
depth and KV usage. Scores 1.0 for the session's engine, 0 for every other; also 0 for the
session's engine when it is overloaded (queue depth above `max_queue_depth`, or KV usage above
`max_kv_usage`) so the turn can move. The scheduler records every committed pick in the session
table, so after a move the next turns follow the new engine. A turn's session is the caller's
session id, else its conversation's key (`services/router/sessions.py`: a chat turn sent without
ids stays with its conversation all the same); a turn with neither (a bare prompt) scores 0.

Parameters:
  max_queue_depth (int >= 0, default 32): above it the session lets go of its engine.
  max_kv_usage (float in (0, 1], default 0.9): likewise for KV-cache usage.
"""

from __future__ import annotations

from typing import ClassVar

import pydantic

from services.common.config import StrictModel
from services.router.registry import EngineState
from services.router.scheduling.interfaces import (
    SESSION_AFFINITY_SCORER,
    PluginContext,
    RoutingRequest,
)


class Params(StrictModel):
    max_queue_depth: int = pydantic.Field(32, ge=0)
    max_kv_usage: float = pydantic.Field(0.9, gt=0, le=1)


class SessionAffinityScorer:
    type_name: ClassVar[str] = SESSION_AFFINITY_SCORER
    decision_reason: ClassVar[str] = "session"

    def __init__(self, name: str, params: Params, ctx: PluginContext) -> None:
        self.name = name
        self._sessions = ctx.sessions
        self.max_queue_depth = params.max_queue_depth
        self.max_kv_usage = params.max_kv_usage

    def score(self, req: RoutingRequest, engines: list[EngineState]) -> dict[str, float]:
        if not req.session_id:
            return {}
        engine_id = self._sessions.get(req.session_id)
        if engine_id is None:
            return {}
        for e in engines:
            if e.engine_id == engine_id:
                if self.overloaded(e):
                    return {}
                return {engine_id: 1.0}
        return {}

    def overloaded(self, e: EngineState) -> bool:
        return e.queue_depth > self.max_queue_depth or e.kv_usage > self.max_kv_usage
