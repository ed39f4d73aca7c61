"""One routing decision for one turn: model → pool, limits, prompt → tokens, then the scheduler.

Shared by Envoy's ext_proc path and `Router.Pick`, so both decide exactly the same way.

A turn the engines would refuse is refused here, with the engine's own INVALID_ARGUMENT, before
it is routed: a body over `router.max_prompt_bytes` before anything is decoded, `max_tokens`
over the engines' limit, a prompt over `router.max_prompt_tokens` or the model's context (the
largest among the model's registered engines). A turn with `truncate_prompt` is routed on the
tokens the engine will keep. Long prompts are tokenized in a worker thread, never on the loop
that serves every other turn, ADS and the engines' registration streams.

The prompt policy of the safety config (`services/safety/prompt.py`: allow, redact, reject per
tenant and model) applies once the served model is known: the turn is routed, its session
keyed, its quota reserved and its response cache entry keyed on the prompt the engine will
prefill (redacted), never on the one the client sent (only a cost tier's choice of the model,
which the policy depends on, estimates the prompt's length as sent).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import InvalidArgument, PayloadTooLarge, ResourceExhausted
from services.common.tokens import (
    Tokenizer,
    TooManyTokens,
    fit_context,
    handoff,
    load_tokenizer,
    turn_tokens_async,
)
from services.router.auth.principal import Principal
from services.router.config import MeshConfig, ModelResolver
from services.router.fallback import Fallbacks
from services.router.registry import Registry
from services.router.scheduling.interfaces import RoutingRequest
from services.router.scheduling.scheduler import Decision, NoEngineAvailable, Scheduler
from services.router.sessions import affinity_key
from services.router.tiers import TierSelector
from services.router.versions import Versions
from services.safety.prompt import PromptPolicy
from switchyard.v1 import inference_pb2


class TokenizerCache:
    """The tokenizer of each served model, loaded once from the pool config."""

    def __init__(self, cfg: MeshConfig) -> None:
        self._paths: dict[tuple[str, str], Path] = {}
        self._loaded: dict[Path, Tokenizer] = {}
        self._lock = threading.Lock()
        self.update(cfg)

    def update(self, cfg: MeshConfig) -> None:
        """The config's models (at start, and on a reload that changes pools): each loads on
        first use (`preload` at start)."""
        # (model, version) → its tokenizer directory; version "" for a pool serving the model
        # unversioned (every version of a model has one unless a pool names it).
        paths: dict[tuple[str, str], Path] = {}
        for p in cfg.pools:
            for m in p.models:
                paths[(m.name, m.version)] = m.tokenizer
                paths.setdefault((m.name, ""), m.tokenizer)
        self._paths = paths

    def get(self, model: str, version: str = "") -> Tokenizer:
        path = self._paths.get((model, version)) or self._paths[(model, "")]
        tok = self._loaded.get(path)
        if tok is None:
            with self._lock:
                tok = self._loaded.get(path)
                if tok is None:
                    tok = load_tokenizer(str(path))
                    self._loaded[path] = tok
        return tok

    def preload(self) -> None:
        for model, version in self._paths:
            self.get(model, version)


@dataclass(frozen=True)
class Limits:
    """What the router refuses before routing (see `RouterSection`)."""

    max_prompt_bytes: int = 4 * 1024 * 1024
    max_prompt_tokens: int = 0  # 0: the model's context
    max_request_headers_kb: int = 64
    max_headers_count: int = 100
    # After the router starts, a turn for a pool without engines waits this long for one to
    # register (engines re-register within seconds of a router restart) instead of failing.
    registration_grace_seconds: float = 0.0


def check_request_size(size: int, limits: Limits) -> None:
    """Refuse a request body over `max_prompt_bytes`, before it is even decoded."""
    if size > limits.max_prompt_bytes:
        raise PayloadTooLarge(
            f"request is {size} bytes, over the mesh's limit of {limits.max_prompt_bytes} bytes "
            "for one turn (router.max_prompt_bytes)"
        )


def check_request_headers(headers: dict[str, str], limits: Limits) -> None:
    """Refuse request headers over the mesh's limits (Envoy's HTTP/2 codec can only reset a
    stream over its own, higher, limits: the router is where a client is told why)."""
    size = sum(len(k) + len(v) for k, v in headers.items())
    if size > limits.max_request_headers_kb * 1024 or len(headers) > limits.max_headers_count:
        raise ResourceExhausted(
            f"request headers are {size} bytes in {len(headers)} headers, over the mesh's limits "
            f"of {limits.max_request_headers_kb} KiB and {limits.max_headers_count} headers "
            "(envoy.max_request_headers_kb, envoy.max_headers_count)"
        )


class RoutingService:
    def __init__(
        self,
        resolver: ModelResolver,
        tokenizers: TokenizerCache,
        scheduler: Scheduler,
        registry: Registry,
        limits: Limits | None = None,
        tiers: TierSelector | None = None,
        fallbacks: Fallbacks | None = None,
        versions: Versions | None = None,
        prompt_policy: PromptPolicy | None = None,
    ) -> None:
        self.resolver = resolver
        self.prompt_policy = prompt_policy  # None: prompts go on as sent
        self.tiers = tiers
        self.fallbacks = fallbacks
        self.versions = versions
        self.tokenizers = tokenizers
        self.scheduler = scheduler
        self.registry = registry
        self.limits = limits or Limits()
        self._grace_until = registry.clock() + self.limits.registration_grace_seconds

    def serves(self, pool: str, model: str, version: str) -> bool:
        """Whether a routable engine of `pool` serves `version` of `model`."""
        return any(
            e.model == model and e.model_version == version for e in self.registry.routable(pool)
        )

    def _model_limits(self, pool: str, model: str) -> tuple[int, int]:
        """(context, max_tokens limit) the model's registered engines accept, the largest of
        each; 0 when unknown (no engine registered yet, or one that does not say)."""
        context = limit = 0
        for e in self.registry.engines(pool):
            if e.model == model:
                context = max(context, e.max_model_len)
                limit = max(limit, e.max_tokens_limit)
        return context, limit

    async def route(
        self,
        req: inference_pb2.GenerateRequest,
        *,
        principal: Principal | None = None,
        tenant: str = "",
        session_id: str = "",
        commit: bool = True,
        cache_salt: str = "",
    ) -> tuple[Decision, RoutingRequest]:
        """Pick an engine for `req`; raises InvalidArgument / PermissionDenied / Unavailable with
        a clear message. The caller's `principal` (the ext_proc path) names the tenant, the
        models it may use and its priority ceiling; without one (Router.Pick, an operator's
        question) the turn is `tenant`'s with the priority it asks for."""
        rr = await self.prepare(
            req, principal=principal, tenant=tenant, session_id=session_id, cache_salt=cache_salt
        )
        return await self.pick(rr, commit), rr

    async def prepare(
        self,
        req: inference_pb2.GenerateRequest,
        *,
        principal: Principal | None = None,
        tenant: str = "",
        session_id: str = "",
        cache_salt: str = "",
        default_max_tokens: int = 0,
    ) -> RoutingRequest:
        """Everything but the pick: model and pool, limits, the prompt's tokens as the engine
        will prefill them. `default_max_tokens` caps a turn that leaves sampling.max_tokens
        unset (the tenant's policy; `RoutingRequest.capped` says it applied)."""
        name = req.model  # ("" is the mesh's default model, never a tier)
        choice = None
        if self.tiers is not None and self.tiers.tiered(name):
            # A tiered name: the cheapest model able to serve this turn that the caller may use.
            allowed = principal.models if principal is not None else ()
            choice = self.tiers.choose(name, req, allowed)
            pool, model = choice.pool, choice.model
        else:
            pool, model = self.resolver.resolve(req.model)
        priority = req.priority
        if principal is not None:  # (before any fallback: a fallback is no way around it)
            principal.check_model(model, req.model)
            tenant, priority = principal.tenant, principal.turn_priority(req.priority)
        degraded = no_fallback = ""
        if self.fallbacks is not None and choice is None and not req.HasField("continuation"):
            fb = self.fallbacks.choose(model, pool, principal)  # (only models it may use)
            if isinstance(fb, str):
                no_fallback = fb
            elif fb is not None:
                pool, model, degraded = fb.pool, fb.model, fb.reason
        prompt = None
        if self.prompt_policy is not None:  # (may rewrite req: before anything reads its text)
            prompt = await self.prompt_policy.apply(req, tenant, model)
        session = req.session_id or session_id
        session_key = affinity_key(tenant, session, req)
        version = version_reason = ""
        vm = self.versions.get(model) if self.versions is not None else None
        if vm is not None:  # sticky per session (the caller's), else per tenant
            arm = vm.choose(
                session_key if session else tenant or req.request_id,
                lambda p, v: self.serves(p, model, v),
                pinned=req.continuation.model_version if req.HasField("continuation") else "",
            )
            pool, version, version_reason = arm.pool, arm.version, arm.reason
        context, max_tokens_limit = self._model_limits(pool, model)
        s = req.sampling
        requested = s.max_tokens if s.HasField("max_tokens") else None
        capped = 0
        if requested is None and default_max_tokens:
            requested = capped = min(default_max_tokens, max_tokens_limit or default_max_tokens)
        elif requested is not None:
            if requested == 0:
                raise InvalidArgument("sampling.max_tokens must be at least 1, got 0")
            if max_tokens_limit and requested > max_tokens_limit:
                raise InvalidArgument(
                    f"sampling.max_tokens must be at most {max_tokens_limit}, got {requested}"
                )
        # Past this many tokens the turn is refused: no need to build all their ids. A turn the
        # engine will truncate keeps only its last tokens (at most the context).
        cap = self.limits.max_prompt_tokens
        bound = cap or None
        keep_last = None
        if context and not req.truncate_prompt:
            bound = min(bound or context, context)
        elif context:
            keep_last = context
        tokenizer = self.tokenizers.get(model, version)
        try:
            turn = await turn_tokens_async(req, tokenizer, limit=bound, keep_last=keep_last)
        except TooManyTokens as e:
            if cap and e.limit == cap:
                raise InvalidArgument(
                    f"prompt is {e.describe()}, over the mesh's limit of {cap} "
                    "(router.max_prompt_tokens)"
                ) from None
            if e.exact:  # the engine's own message
                fit_context(e.count, requested, context, default_max_tokens=1, truncate=False)
            raise InvalidArgument(
                f"prompt is {e.describe()}: it cannot fit the model's context of {context} "
                "tokens (shorten the prompt, or set truncate_prompt)"
            ) from None
        max_tokens = requested or 1
        if req.HasField("continuation"):  # a resumed turn has only what is left of its budget
            max_tokens = max(1, max_tokens - req.continuation.completion_tokens)
        tokens = turn.ids
        # The most the engine may generate: what the quota reserves.
        output_bound = max_tokens
        if context:
            max_tokens, truncated = fit_context(
                turn.count,
                max_tokens,
                context,
                default_max_tokens=1,
                truncate=req.truncate_prompt,
            )
            kept = turn.count - truncated  # the engine prefills the last `kept` tokens
            tokens = tokens[len(tokens) - kept :]
            output_bound = max_tokens if requested else max(1, context - kept)
        rr = RoutingRequest(
            request_id=req.request_id,
            tenant=tenant,
            session_id=session_key,
            model=model,
            model_version=version,
            version_reason=version_reason,
            pool=pool,
            prompt_token_ids=tokens,
            max_tokens=max_tokens,
            priority=priority,
            cache_salt=cache_salt,
            output_bound=output_bound,
            capped=capped,
            resumed=req.HasField("continuation"),
            routed_as=choice.routed_as if choice is not None else "",
            route_reason=choice.reason if choice is not None else "",
            degraded_reason=degraded,
            no_fallback=no_fallback,
            handoff=handoff(turn, tokenizer),
        )
        if prompt is not None:
            rr.prompt_outcome = prompt.outcome
            rr.prompt_findings = dict(prompt.findings)
            rr.prompt_actions = prompt.actions
        return rr

    async def pick(self, rr: RoutingRequest, commit: bool = True) -> Decision:
        """The scheduler's pick; right after the router starts, a pool with no engine yet
        waits (up to the registration grace) for engines to register again."""
        while True:
            try:
                return self.scheduler.pick(rr, commit=commit)
            except NoEngineAvailable as e:
                left = self._grace_until - self.registry.clock()
                if left <= 0 or self.registry.engines(rr.pool):
                    if rr.no_fallback:
                        raise NoEngineAvailable(f"{e}; no fallback: {rr.no_fallback}") from None
                    raise
                await self.registry.wait_changed(left)
