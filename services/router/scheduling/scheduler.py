"""One routing decision: the pool's engines → filters → scorers (weighted) → picker.

`Scheduler.pick(req)` returns a `Decision`: the chosen engine, up to two fallbacks for Envoy's
retries before the first byte, and on demand every candidate with its filter verdict and scores
(`Decision.to_proto()` fills a `router_pb2.PickResponse`). A committed decision is accounted
for at once: the engine's `pending` turns, the session table, and the approximate prefix index.

Every plugin call is timed into `switchyard_router_plugin_duration_seconds{extension_point,
plugin_type, plugin_name}`; committed decisions count into `switchyard_router_decisions_total
{pool, reason}`, reason being the `decision_reason` of the scorer that most separated the
winner from the runner-up ("prefix", "session", "load", "kv"), "tie" when none did, or
"only-candidate". Label children are bound once, so the hot path only observes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from itertools import repeat
from operator import add, mul
from time import perf_counter

import prometheus_client

from services.common.errors import Unavailable
from services.router.kvindex import KvIndex
from services.router.registry import EngineState, Registry
from services.router.scheduling.interfaces import (
    FILTER,
    PICKER,
    SCORER,
    Filter,
    PluginContext,
    RoutingRequest,
    Scorer,
)
from services.router.scheduling.profile import DEFAULT_PROFILE, Profile
from services.router.sessions import SessionTable
from switchyard.v1 import router_pb2

PLUGIN_DURATION = prometheus_client.Histogram(
    "switchyard_router_plugin_duration_seconds",
    "Time of one scheduling plugin call (one filter, scorer or picker pass over the engines).",
    ["extension_point", "plugin_type", "plugin_name"],
    buckets=(5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2),
)
PICK_DURATION = prometheus_client.Histogram(
    "switchyard_router_pick_duration_seconds",
    "Time of one routing decision (filters, scorers, picker and accounting).",
    buckets=(2.5e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2),
)
DECISIONS = prometheus_client.Counter(
    "switchyard_router_decisions",
    "Committed routing decisions, by pool and the scorer that decided them.",
    ["pool", "reason"],
)

ONLY_CANDIDATE = "only-candidate"
# The pick span's attribute per candidate engine: this prefix, then the engine id.
CANDIDATE_ATTRIBUTE = "switchyard.candidate."
TIE = "tie"
UNAVAILABLE = "unavailable"
# Engines named in a NoEngineAvailable message before "... and N more".
MAX_NAMED = 8


class NoEngineAvailable(Unavailable):
    """No engine of the pool may take the turn; the message says why, engine by engine."""


@dataclass(frozen=True)
class CandidateScore:
    """One engine of the pool as the decision saw it; mirrors router_pb2.Candidate."""

    engine_id: str
    endpoint: str  # HOST:PORT
    filtered_by: str  # name of the filter that removed it; "" when it passed every filter
    score: float  # weighted total (0 when filtered)
    scores: dict[str, float]  # scorer name → [0, 1] (empty when filtered)

    def to_proto(self) -> router_pb2.Candidate:
        return router_pb2.Candidate(
            engine_id=self.engine_id,
            endpoint=self.endpoint,
            filtered_by=self.filtered_by,
            score=self.score,
            scores=self.scores,
        )


@dataclass(eq=False)
class Decision:
    """The outcome of one pick."""

    pool: str  # the request's pool
    model: str  # served model name
    engine: EngineState  # the chosen engine
    fallbacks: list[EngineState]  # next best, in order (up to the scheduler's `fallbacks`)
    reason: str  # what decided it (the decisions metric's `reason` label)
    prompt_tokens: int  # prompt length as routed
    committed: bool  # accounted as a routed turn
    # Raw material for `candidates`, built only when asked for.
    _engines: list[EngineState] = field(repr=False)
    _filtered: dict[str, str] = field(repr=False)  # engine_id → filter name
    _ids: list[str] = field(repr=False)  # engines that passed the filters
    _acc: list[float] = field(repr=False)  # their weighted totals, aligned with _ids
    _scores: list[tuple[str, dict[str, float]]] = field(repr=False)  # (scorer, engine → score)

    @cached_property
    def candidates(self) -> list[CandidateScore]:
        """Every engine of the pool: its filter verdict, weighted total and per-scorer scores."""
        totals = dict(zip(self._ids, self._acc, strict=True))
        out = []
        for e in self._engines:
            eid = e.engine_id
            by = self._filtered.get(eid, "")
            if by or eid not in totals:
                out.append(CandidateScore(eid, e.address, by, 0.0, {}))
                continue
            scores = {name: s.get(eid, 0.0) for name, s in self._scores}
            out.append(CandidateScore(eid, e.address, "", totals[eid], scores))
        return out

    def candidate_attributes(self) -> dict[str, str]:
        """The candidates as span attributes, one per engine (`switchyard.candidate.<engine>`):
        `score=<total> <scorer>=<score> ...` in the profile's order, or `filtered_by=<filter>`.
        Built straight from the raw scores, for every traced turn. One string per engine, not
        one attribute per score: the exporter encodes each attribute apart, and a span keeps
        128 attributes by default, which one per score overran at ~24 engines."""
        out: dict[str, str] = {}
        for eid, total in zip(self._ids, self._acc, strict=True):
            scores = " ".join(f"{name}={s.get(eid, 0.0):.4g}" for name, s in self._scores)
            out[f"{CANDIDATE_ATTRIBUTE}{eid}"] = f"score={total:.4g} {scores}".rstrip()
        for eid, by in self._filtered.items():
            out[f"{CANDIDATE_ATTRIBUTE}{eid}"] = f"filtered_by={by}"
        return out

    def to_proto(self) -> router_pb2.PickResponse:
        return router_pb2.PickResponse(
            pool=self.pool,
            model=self.model,
            engine_id=self.engine.engine_id,
            endpoint=self.engine.address,
            fallback_endpoints=[e.address for e in self.fallbacks],
            candidates=[c.to_proto() for c in self.candidates],
            prompt_tokens=self.prompt_tokens,
        )


Observe = Callable[[float], None]


def _clamped(scores: dict[str, float]) -> dict[str, float]:
    """Scores forced into [0, 1]; NaN becomes 0."""
    return {k: (v if v <= 1.0 else 1.0) if v > 0.0 else 0.0 for k, v in scores.items()}


class Scheduler:
    """Routes turns within a pool with the plugins of one profile."""

    def __init__(
        self,
        registry: Registry,
        index: KvIndex,
        sessions: SessionTable,
        profile: Profile | None = None,
        *,
        fallbacks: int = 2,
    ) -> None:
        if registry.index is not index:
            raise ValueError("the scheduler's index must be the one the registry feeds")
        if fallbacks < 0:
            raise ValueError(f"fallbacks must be >= 0, got {fallbacks}")
        self.profile = profile or DEFAULT_PROFILE
        self._registry = registry
        self._index = index
        self._sessions = sessions
        self._fallbacks = fallbacks
        built = self.profile.build(PluginContext(registry, index, sessions))

        def timer(point: str, type_name: str, name: str) -> Observe:
            return PLUGIN_DURATION.labels(point, type_name, name).observe

        self._filters: list[tuple[Filter, Observe]] = [
            (f, timer(FILTER, f.type_name, f.name)) for f in built.filters
        ]
        self._scorers: list[tuple[Scorer, float, Observe]] = [
            (s, w, timer(SCORER, s.type_name, s.name)) for s, w in built.scorers
        ]
        self._picker = built.picker
        self._picker_timer = timer(PICKER, built.picker.type_name, built.picker.name)
        self._filter_by_name = {f.name: f for f in built.filters}
        self._decisions: dict[tuple[str, str], Callable[[], None]] = {}
        self._pick_timer = PICK_DURATION.observe

    def pick(self, req: RoutingRequest, commit: bool = True) -> Decision:
        """Choose an engine of `req.pool` for the turn; raises NoEngineAvailable."""
        start = perf_counter()
        engines = self._registry.engines(req.pool)
        if not engines:
            self._count(commit, req.pool, UNAVAILABLE)
            raise NoEngineAvailable(f"pool {req.pool}: no engines registered")

        survivors = engines
        filtered: dict[str, str] = {}
        for f, observe in self._filters:
            t0 = perf_counter()
            kept = f.filter(req, survivors)
            observe(perf_counter() - t0)
            if len(kept) != len(survivors):
                keep = {id(e) for e in kept}
                for e in survivors:
                    if id(e) not in keep:
                        filtered[e.engine_id] = f.name
                survivors = kept
                if not survivors:
                    break
        if not survivors:
            self._count(commit, req.pool, UNAVAILABLE)
            raise NoEngineAvailable(self._why_none(req, engines, filtered))

        # Weighted totals, aligned with `survivors`; map/zip keep the per-engine work in C.
        ids = [e.engine_id for e in survivors]
        acc = [0.0] * len(ids)
        per_scorer: list[tuple[str, dict[str, float]]] = []
        for s, weight, observe in self._scorers:
            t0 = perf_counter()
            raw = s.score(req, survivors)
            observe(perf_counter() - t0)
            if raw:
                vals = raw.values()
                if min(vals) < 0.0 or max(vals) > 1.0:
                    raw = _clamped(raw)
                if weight:
                    # Scorers usually answer every engine, in order: skip the lookups then.
                    col = raw.values() if list(raw) == ids else map(raw.get, ids, repeat(0.0))
                    acc = list(map(add, acc, map(mul, col, repeat(weight))))
            per_scorer.append((s.name, raw))
        total = sum(acc)
        if total != total:  # a NaN score slipped past min/max: clamp everything, rarely
            per_scorer = [(name, _clamped(raw)) for name, raw in per_scorer]
            acc = [
                sum(
                    w * raw.get(eid, 0.0)
                    for (_s, w, _o), (_n, raw) in zip(self._scorers, per_scorer, strict=True)
                )
                for eid in ids
            ]

        t0 = perf_counter()
        ranked = self._picker.pick(
            req, list(zip(survivors, acc, strict=True)), max(2, 1 + self._fallbacks)
        )
        self._picker_timer(perf_counter() - t0)
        if not ranked:
            raise NoEngineAvailable(
                f"pool {req.pool}: picker {self._picker.name} chose none of {len(ids)} engines"
            )
        chosen = ranked[0]
        reason = self._reason(chosen, ranked, ids, acc, per_scorer)

        if commit:
            eid = chosen.engine_id
            self._registry.note_routed(eid)
            if req.session_id:
                self._sessions.set(req.session_id, eid)
            # (On an engine with KV events, until they confirm the blocks: see kvindex.)
            self._index.record_routed(eid, req.block_hashes(chosen.kv_block_size))
            self._count(True, req.pool, reason)
        decision = Decision(
            pool=req.pool,
            model=req.model,
            engine=chosen,
            fallbacks=ranked[1 : 1 + self._fallbacks],
            reason=reason,
            prompt_tokens=len(req.prompt_token_ids),
            committed=commit,
            _engines=engines,
            _filtered=filtered,
            _ids=ids,
            _acc=acc,
            _scores=per_scorer,
        )
        self._pick_timer(perf_counter() - start)
        return decision

    def _reason(
        self,
        chosen: EngineState,
        ranked: list[EngineState],
        ids: list[str],
        totals: list[float],
        per_scorer: list[tuple[str, dict[str, float]]],
    ) -> str:
        """The decision_reason of the scorer that most separated the winner from the best
        engine scoring strictly less; TIE when every candidate scored the same."""
        if len(ids) < 2:
            return ONLY_CANDIDATE
        a = chosen.engine_id
        bar = totals[ids.index(a)] - 1e-9
        b = ""
        for e in ranked[1:]:  # usually the runner-up
            i = ids.index(e.engine_id)
            if totals[i] < bar:
                b = e.engine_id
                break
        else:
            lower = [t for t in totals if t < bar]
            if not lower:
                return TIE
            b = ids[totals.index(max(lower))]
        best, best_gap = TIE, 1e-9
        for (s, weight, _o), (_n, scores) in zip(self._scorers, per_scorer, strict=True):
            gap = weight * (scores.get(a, 0.0) - scores.get(b, 0.0))
            if gap > best_gap:
                best, best_gap = s.decision_reason, gap
        return best

    def _count(self, commit: bool, pool: str, reason: str) -> None:
        if not commit:
            return
        inc = self._decisions.get((pool, reason))
        if inc is None:
            inc = self._decisions[(pool, reason)] = DECISIONS.labels(pool, reason).inc
        inc()

    def _why_none(
        self, req: RoutingRequest, engines: list[EngineState], filtered: dict[str, str]
    ) -> str:
        parts = []
        for e in sorted(engines, key=lambda e: e.engine_id):
            f = self._filter_by_name.get(filtered.get(e.engine_id, ""))
            parts.append(f"{e.engine_id} {f.reason(req, e) if f else 'filtered'}")
        if len(parts) > MAX_NAMED:
            parts = [*parts[:MAX_NAMED], f"... and {len(parts) - MAX_NAMED} more"]
        n = len(engines)
        return f"pool {req.pool}: {n} engine{'s' if n != 1 else ''}, all filtered: " + ", ".join(
            parts
        )
