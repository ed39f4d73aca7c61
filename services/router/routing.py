"""One routing decision for one turn: model → pool, prompt → tokens, then the scheduler.

Shared by Envoy's ext_proc path and `Router.Pick`, so both decide exactly the same way.
"""

from __future__ import annotations

import threading
from pathlib import Path

from services.common.tokens import Tokenizer, load_tokenizer, prompt_token_ids
from services.router.config import MeshConfig, ModelResolver
from services.router.scheduling.interfaces import RoutingRequest
from services.router.scheduling.scheduler import Decision, Scheduler
from switchyard.v1 import inference_pb2


class TokenizerCache:
    """The tokenizer of each served model, loaded once from the pool config."""

    def __init__(self, cfg: MeshConfig) -> None:
        self._paths: dict[str, Path] = {m.name: m.tokenizer for p in cfg.pools for m in p.models}
        self._loaded: dict[str, Tokenizer] = {}
        self._lock = threading.Lock()

    def get(self, model: str) -> Tokenizer:
        tok = self._loaded.get(model)
        if tok is None:
            with self._lock:
                tok = self._loaded.get(model)
                if tok is None:
                    tok = load_tokenizer(str(self._paths[model]))
                    self._loaded[model] = tok
        return tok

    def preload(self) -> None:
        for model in self._paths:
            self.get(model)


class RoutingService:
    def __init__(
        self, resolver: ModelResolver, tokenizers: TokenizerCache, scheduler: Scheduler
    ) -> None:
        self.resolver = resolver
        self.tokenizers = tokenizers
        self.scheduler = scheduler

    def route(
        self,
        req: inference_pb2.GenerateRequest,
        *,
        tenant: str = "",
        session_id: str = "",
        commit: bool = True,
    ) -> tuple[Decision, RoutingRequest]:
        """Pick an engine for `req`; raises InvalidArgument / Unavailable with a clear message."""
        pool, model = self.resolver.resolve(req.model)
        tokens = prompt_token_ids(req, self.tokenizers.get(model))
        rr = RoutingRequest(
            request_id=req.request_id,
            tenant=tenant,
            session_id=req.session_id or session_id,
            model=model,
            pool=pool,
            prompt_token_ids=tokens,
            max_tokens=req.sampling.max_tokens if req.sampling.HasField("max_tokens") else 1,
            priority=req.priority,
        )
        return self.scheduler.pick(rr, commit=commit), rr
