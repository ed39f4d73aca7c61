"""Model versions: one model name served by several versions (canary and A/B arms), by weight.

    versions:
      small:
        weights: {stable: 95, canary: 5}   # version → weight; the first (or `baseline`) is the
        rollback:                          # baseline the others are compared with
          window_seconds: 300
          min_turns: 20                    # per arm, in the window, before it is judged
          max_failed_increase: 0.05        # canary's failed share minus the baseline's
          max_ttft_p99_ratio: 2.0          # canary's TTFT p99 over the baseline's
    pools:
      - name: l4-small
        models: [{name: small, tokenizer: ...}]     # every version its engines report
        engines:
          - {config: engine-small.yaml, count: 2, version: stable}
          - {config: engine-small-next.yaml, count: 1, version: canary}
      - name: h100-next                              # or a version in a pool of its own
        models: [{name: small, version: next, tokenizer: ...}]

A version is what engines report as `model_version` (the engine config's `model.version`, or
`up`'s engine group `version`, else the model directory's content hash). A turn for a versioned
model goes to one arm by weighted rendezvous hashing of a sticky key — the tenant's session id,
else the tenant — so every turn of a conversation lands on one arm (and on that arm's prefix
cache: the scheduler only considers the arm's engines), each arm takes its weight's share of
keys, and a weight change moves only the keys it must. An arm with no serving engine passes its
turns to the next arm in the key's order; a resumed turn stays on the arm that served it.

Weights change live (`switchyard admin versions set`, or the config file's `versions` section:
a reload resets that model's arms to the file). Each engine reports how every turn ended and its
time to first text; the router keeps per-version metrics, and for a model with `rollback` a
canary that fails more, or whose TTFT p99 is worse, than the baseline by the configured margin
over the window is set to weight 0 — logged, counted, and shown in `switchyard status`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pydantic
from prometheus_client import Counter, Gauge, Histogram

from services.common.config import StrictModel
from services.common.errors import InvalidArgument, NotFound
from services.common.stats import nearest_rank
from switchyard.v1 import engine_pb2, router_pb2

log = logging.getLogger(__name__)

TURNS = Counter(
    "switchyard_router_version_turns_total",
    "Turns ended, per served model version, by outcome (ok, failed, cancelled).",
    ["model", "version", "outcome"],
)
TTFT = Histogram(
    "switchyard_router_version_ttft_seconds",
    "Time to first text as the engine measured it, per served model version.",
    ["model", "version"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
TOKENS = Counter(
    "switchyard_router_version_completion_tokens_total",
    "Completion tokens generated, per served model version.",
    ["model", "version"],
)
WEIGHT = Gauge(
    "switchyard_router_version_weight",
    "The weight each version (arm) of a versioned model gets new sessions by.",
    ["model", "version"],
)
ROLLBACKS = Counter(
    "switchyard_router_version_rollbacks_total",
    "Canary arms the automatic rollback set to weight 0.",
    ["model", "version"],
)

STATUS_WINDOW_SECONDS = 300.0  # the window status shows for a model without `rollback`

OUTCOMES = {
    engine_pb2.TURN_OUTCOME_OK: "ok",
    engine_pb2.TURN_OUTCOME_FAILED: "failed",
    engine_pb2.TURN_OUTCOME_CANCELLED: "cancelled",
}


class RollbackSection(StrictModel):
    window_seconds: float = pydantic.Field(300.0, gt=0)
    min_turns: int = pydantic.Field(20, ge=1)  # per arm in the window before it is judged
    max_failed_increase: float = pydantic.Field(0.05, ge=0, le=1)
    max_ttft_p99_ratio: float | None = pydantic.Field(2.0, gt=1)  # None: TTFT not judged


class VersionsSection(StrictModel):
    weights: dict[str, float] = pydantic.Field(min_length=1)  # version → weight (>= 0)
    baseline: str = ""  # the arm canaries are judged against; default: the first
    rollback: RollbackSection | None = None

    @pydantic.model_validator(mode="after")
    def _check(self) -> VersionsSection:
        for version, w in self.weights.items():
            if not version:
                raise ValueError("weights: a version name may not be empty")
            if not (w >= 0 and math.isfinite(w)):
                raise ValueError(f"weights.{version}: must be a finite number >= 0, got {w}")
        if not any(self.weights.values()):
            raise ValueError("weights: at least one version needs a weight above 0")
        if self.baseline and self.baseline not in self.weights:
            raise ValueError(f"baseline: {self.baseline!r} is not one of weights' versions")
        return self

    @property
    def baseline_version(self) -> str:
        return self.baseline or next(iter(self.weights))


@dataclass(frozen=True)
class VersionChoice:
    version: str
    pool: str
    reason: str  # for the pick span


@dataclass
class _Arm:
    version: str
    pool: str
    configured: float
    weight: float
    rolled_back: str = ""
    # (ended at, failed, ttft seconds or None) for turns that were not cancelled
    window: deque[tuple[float, bool, float | None]] = field(default_factory=deque)

    def prune(self, since: float) -> None:
        while self.window and self.window[0][0] < since:
            self.window.popleft()

    def failed(self) -> int:
        return sum(1 for _, f, _ in self.window if f)

    def ttft_p99(self) -> float | None:
        return nearest_rank((t for _, _, t in self.window if t is not None), 0.99)


def _rank(key: str, version: str) -> float:
    """A uniform draw in (0, 1) from the key and the version: the rendezvous hash."""
    d = hashlib.blake2b(f"{key}\0{version}".encode(), digest_size=8).digest()
    return (int.from_bytes(d, "big") + 0.5) / 2**64


class VersionedModel:
    """One model's arms: sticky weighted assignment, live weights, rollback."""

    def __init__(
        self,
        model: str,
        section: VersionsSection,
        pool_of: Callable[[str], str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.section = section
        self.baseline = section.baseline_version
        self._clock = clock
        self.arms = {
            v: _Arm(v, pool_of(v), w, w) for v, w in section.weights.items()
        }  # in config order
        for arm in self.arms.values():
            WEIGHT.labels(model, arm.version).set(arm.weight)

    def ranked(self, key: str) -> list[_Arm]:
        """The arms with weight, in this key's order (the first takes it)."""
        live = [a for a in self.arms.values() if a.weight > 0] or [self.arms[self.baseline]]
        return sorted(live, key=lambda a: a.weight / -math.log(_rank(key, a.version)), reverse=True)

    def choose(
        self, key: str, serving: Callable[[str, str], bool], pinned: str = ""
    ) -> VersionChoice:
        """The arm for a turn with sticky `key`; `serving(pool, version)`: whether it has an
        engine to take it now. `pinned`: the arm of the stream a resumed turn continues."""
        arm = self.arms.get(pinned) if pinned else None
        if arm is not None and serving(arm.pool, arm.version):
            return VersionChoice(arm.version, arm.pool, f"{arm.version}: resumes its stream")
        ranked = self.ranked(key)
        total = sum(a.weight for a in self.arms.values())
        for i, arm in enumerate(ranked):
            if serving(arm.pool, arm.version):
                share = f"{arm.weight / total:.0%}" if total else "all"
                why = f"{arm.version} ({share} of sessions)"
                if i:
                    skipped = ", ".join(a.version for a in ranked[:i])
                    why += f"; {skipped} has no serving engine"
                return VersionChoice(arm.version, arm.pool, why)
        first = ranked[0]  # none serves: the pick says why
        return VersionChoice(first.version, first.pool, f"{first.version}: no arm has an engine")

    def set_weights(self, weights: dict[str, float]) -> None:
        for version, w in weights.items():
            if version not in self.arms:
                raise NotFound(
                    f"model {self.model!r} has no version {version!r} "
                    f"(versions: {', '.join(self.arms)})"
                )
            if not (w >= 0 and math.isfinite(w)):
                raise InvalidArgument(f"weights[{version}] must be a finite number >= 0, got {w}")
        after = {v: weights.get(v, a.weight) for v, a in self.arms.items()}
        if not any(after.values()):
            raise InvalidArgument(
                f"weights: at least one version of {self.model!r} needs a weight above 0"
            )
        for version, w in weights.items():
            arm = self.arms[version]
            arm.weight, arm.rolled_back = w, ""
            WEIGHT.labels(self.model, version).set(w)

    def observe(self, version: str, failed: bool, ttft: float | None) -> str:
        """One ended turn of `version`; returns the rollback reason when it rolled back."""
        arm = self.arms.get(version)
        if arm is None:
            return ""
        now = self._clock()
        arm.window.append((now, failed, ttft))
        rb = self.section.rollback
        if rb is None:  # (the window still shows in `switchyard status`)
            arm.prune(now - STATUS_WINDOW_SECONDS)
            return ""
        since = now - rb.window_seconds
        for a in self.arms.values():
            a.prune(since)
        if version == self.baseline or arm.weight == 0:
            return ""
        base = self.arms[self.baseline]
        n, nb = len(arm.window), len(base.window)
        if n < rb.min_turns or nb < rb.min_turns:
            return ""
        fc, fb = arm.failed() / n, base.failed() / nb
        reason = ""
        if fc - fb > rb.max_failed_increase:
            reason = (
                f"failed {fc:.0%} of {n} turns against the baseline {self.baseline}'s {fb:.0%} "
                f"of {nb} over {rb.window_seconds:g}s (at most +{rb.max_failed_increase:.0%})"
            )
        elif rb.max_ttft_p99_ratio is not None:
            pc, pb = arm.ttft_p99(), base.ttft_p99()
            if pc is not None and pb is not None and pc > pb * rb.max_ttft_p99_ratio:
                reason = (
                    f"TTFT p99 {pc * 1000:.0f} ms against the baseline {self.baseline}'s "
                    f"{pb * 1000:.0f} ms over {rb.window_seconds:g}s "
                    f"(at most {rb.max_ttft_p99_ratio:g}x)"
                )
        if reason:
            arm.weight, arm.rolled_back = 0.0, reason
            WEIGHT.labels(self.model, version).set(0)
            ROLLBACKS.labels(self.model, version).inc()
            log.warning(
                "rolled back version %s of model %s (weight 0): %s", version, self.model, reason
            )
        return reason

    def to_proto(self) -> router_pb2.VersionedModel:
        out = router_pb2.VersionedModel(model=self.model, baseline=self.baseline)
        for a in self.arms.values():
            p99 = a.ttft_p99()
            out.arms.append(
                router_pb2.VersionArm(
                    version=a.version,
                    pool=a.pool,
                    weight=a.weight,
                    configured_weight=a.configured,
                    rolled_back=a.rolled_back,
                    window_turns=len(a.window),
                    window_failed=a.failed(),
                    window_ttft_p99=p99 or 0.0,
                )
            )
        return out


class Versions:
    """Every versioned model of the mesh; per-version metrics for every model."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.models: dict[str, VersionedModel] = {}

    def configure(
        self, sections: dict[str, VersionsSection], pool_of: Callable[[str, str], str]
    ) -> None:
        """Take the config's `versions` (at start and on reload): a model whose section and
        pools did not change keeps its arms as they are (live weights, rollbacks, windows)."""
        models: dict[str, VersionedModel] = {}
        for model, section in sections.items():
            old = self.models.get(model)
            pools = {v: pool_of(model, v) for v in section.weights}
            if (
                old is not None
                and old.section == section
                and {v: a.pool for v, a in old.arms.items()} == pools
            ):
                models[model] = old
            else:
                models[model] = VersionedModel(model, section, pools.__getitem__, self._clock)
        for model, old in self.models.items():
            kept = set(models[model].arms) if model in models else set()
            for v in set(old.arms) - kept:
                with contextlib.suppress(KeyError):  # (already gone)
                    WEIGHT.remove(model, v)
        self.models = models

    def get(self, model: str) -> VersionedModel | None:
        return self.models.get(model)

    def set_weights(self, model: str, weights: dict[str, float]) -> VersionedModel:
        vm = self.models.get(model)
        if vm is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise NotFound(f"model {model!r} has no versions configured (versioned: {known})")
        vm.set_weights(weights)
        log.info("version weights of %s set: %s", model, weights)
        return vm

    def observe(
        self, model: str, version: str, usage: engine_pb2.TurnUsage, ttft: float | None
    ) -> None:
        """An engine's report of a turn that ended, with its time to first text in seconds
        (metrics; a canary's rollback)."""
        outcome = OUTCOMES.get(usage.outcome)
        if outcome is None:  # (an engine from before outcomes were reported)
            return
        TURNS.labels(model, version, outcome).inc()
        if usage.completion_tokens:
            TOKENS.labels(model, version).inc(usage.completion_tokens)
        if ttft is not None:
            TTFT.labels(model, version).observe(ttft)
        vm = self.models.get(model)
        if vm is not None and outcome != "cancelled":
            vm.observe(version, outcome == "failed", ttft)

    def to_proto(self) -> list[router_pb2.VersionedModel]:
        return [vm.to_proto() for vm in self.models.values()]
