"""The routing request, and one Protocol per extension point: Filter → Scorer → Picker.

A plugin has a `type_name` (what profiles name in `type:`) and an instance `name` (what the
profile's lists refer to, and the metric label). Plugins are built by factories that get their
validated parameters and a `PluginContext` (the registry, prefix index and session table).

- Filter: keeps the engines a turn may go to; says, for a removed engine, why.
- Scorer: rates every surviving engine in [0, 1] (higher is better; the framework clamps, and an
  engine missing from the answer scores 0). Its `decision_reason` labels decisions it dominates.
- Picker: ranks the scored engines; the scheduler takes the first and keeps the next as
  fallbacks for Envoy's retries before the first byte.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal, Protocol

from services.router.kvindex import KvIndex, block_hashes
from services.router.registry import EngineState, Registry
from services.router.sessions import SessionTable
from switchyard.v1 import inference_pb2

# Extension points (the `extension_point` metric label).
FILTER: Final = "filter"
SCORER: Final = "scorer"
PICKER: Final = "picker"
ExtensionPoint = Literal["filter", "scorer", "picker"]

# Plugin type names, as profiles spell them in `type:`.
HEALTHY_FILTER = "healthy-filter"
NOT_DRAINING_FILTER = "not-draining-filter"
SERVES_MODEL_FILTER = "serves-model-filter"
FITS_CONTEXT_FILTER = "fits-context-filter"
KV_UTILIZATION_FILTER = "kv-utilization-filter"
PREFIX_AFFINITY_SCORER = "prefix-affinity-scorer"
SESSION_AFFINITY_SCORER = "session-affinity-scorer"
QUEUE_DEPTH_SCORER = "queue-depth-scorer"
KV_UTILIZATION_SCORER = "kv-utilization-scorer"
MAX_SCORE_PICKER = "max-score-picker"


@dataclass(kw_only=True, eq=False)
class RoutingRequest:
    """One turn to route. Carries prompt tokens: log `anon_repr()`, never the tokens."""

    request_id: str  # client's or generated id, for logs and traces
    tenant: str = ""  # who the turn is routed for
    # Session affinity's key: the caller's session id (tenant-scoped) or its conversation's
    # (services/router/sessions.py); "" for none.
    session_id: str = ""
    model: str  # served model name (aliases already resolved)
    pool: str  # the pool serving `model`
    # The version (arm) of a model served by several (services/router/versions.py): only its
    # engines are candidates; "" for any version.
    model_version: str = ""
    version_reason: str = ""  # how the arm was chosen, for the span
    prompt_token_ids: Sequence[int] = field(repr=False)  # the prompt, as the engine will see it
    max_tokens: int = 1  # upper bound on generated tokens
    priority: int = 0  # higher runs first on a saturated engine
    # The tenant's (or its cache group's) prefix-cache salt: its blocks are its own.
    cache_salt: str = ""
    output_bound: int = 1  # the most tokens the engine may generate (reserved against quotas)
    capped: int = 0  # sampling.max_tokens the router sets (the tenant's default cap); 0: none
    resumed: bool = False  # a resumed turn (its prompt was charged by the turn it continues)
    routed_as: str = ""  # the tiered name asked for ("auto"), when a tier chose the model
    route_reason: str = ""  # how the tier chose it
    degraded_reason: str = ""  # a fallback serves the turn: why (services/router/fallback.py)
    no_fallback: str = ""  # why the model's fallback did not take the turn, when it has one
    # The prompt policy (services/safety/prompt.py): "" not applied, "passed" or "redacted"
    # (the request was rewritten: the engine must get it as such); entities found by type, and
    # the action taken on each type.
    prompt_outcome: str = ""
    prompt_findings: dict[str, int] = field(default_factory=dict, repr=False)
    prompt_actions: dict[str, str] = field(default_factory=dict, repr=False)
    # The input's ids for the engine (`GenerateRequest.prompt_tokens`): it need not tokenize
    # the turn again. None when they are not the whole input (a prompt truncated here).
    handoff: inference_pb2.PromptTokens | None = field(default=None, repr=False)
    # Own block hashes of the prompt by block size, computed on first use.
    _hashes: dict[int, list[int]] = field(default_factory=dict, init=False, repr=False)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    def block_hashes(self, block_size: int) -> list[int]:
        """Own chained hashes of the prompt's full blocks (see kvindex), cached per size."""
        got = self._hashes.get(block_size)
        if got is None:
            got = self._hashes[block_size] = block_hashes(
                self.prompt_token_ids, block_size, salt=self.cache_salt
            )
        return got

    def anon_repr(self) -> str:
        return (
            f"RoutingRequest(id={self.request_id!r}, tenant={self.tenant!r}, "
            f"session={bool(self.session_id)}, model={self.model!r}, pool={self.pool!r}, "
            f"prompt_tokens={self.prompt_tokens}, max_tokens={self.max_tokens}, "
            f"priority={self.priority})"
        )


@dataclass(frozen=True)
class PluginContext:
    """What a plugin factory may hold on to: shared router state, never per-request data."""

    registry: Registry
    index: KvIndex
    sessions: SessionTable

    @property
    def clock(self) -> Callable[[], float]:
        return self.registry.clock


class Plugin(Protocol):
    type_name: ClassVar[str]  # the registry key, e.g. "queue-depth-scorer"
    name: str  # this instance's name in the profile


class Filter(Plugin, Protocol):
    def filter(self, req: RoutingRequest, engines: list[EngineState]) -> list[EngineState]:
        """The engines that may serve `req`, in the given order."""
        ...

    def reason(self, req: RoutingRequest, engine: EngineState) -> str:
        """Why `engine` was filtered out, for humans ("kv utilization 0.97 > 0.95").
        Called only for engines `filter` removed, off the hot path."""
        ...


class Scorer(Plugin, Protocol):
    # Label of `switchyard_router_decisions_total{reason}` when this scorer decided the pick.
    decision_reason: ClassVar[str]

    def score(self, req: RoutingRequest, engines: list[EngineState]) -> dict[str, float]:
        """engine_id → score in [0, 1]; engines left out score 0."""
        ...


class Picker(Plugin, Protocol):
    def pick(
        self, req: RoutingRequest, scored: list[tuple[EngineState, float]], limit: int
    ) -> list[EngineState]:
        """The best `limit` engines of `scored` (engine, weighted total), best first."""
        ...
