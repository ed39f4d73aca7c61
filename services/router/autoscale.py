"""The autoscaling signal: how many engines each pool should have, from its load.

    autoscale:
      queue_up: 100               # turns waiting in a pool (router and engines) → scale up
      ttft_p95_slo_seconds: 0.7   # or time to first text p95 over the window above this
      kv_up: 0.9                  # or mean KV-cache usage above this
      queue_down: 20              # scale down only with fewer waiting than this,
      utilization_down: 0.4       # turns running under this share of the pool's capacity,
                                  # and KV-cache usage under it too
      up_stabilization_seconds: 0     # scale up at once,
      down_stabilization_seconds: 300 # down only when every recommendation over 5 min agrees
      pools: {h100-large: {min_engines: 1, max_engines: 8, warm_standby: 0}}

Each pool's recommendation is a pure function of its signal (`recommend`): on pressure, at least
one engine more and as many as its turns need at the per-engine capacity of its accelerator
(`saturation.capacity`: an H100 engine absorbs more turns than an L4 one); when idle, one engine
less (never below what its turns need); else as it is; within the pool's bounds, plus its warm
standbys. A `Stabilizer` per pool then follows Kubernetes HPA's rule: the desired size is the
lowest recommendation of the scale-up window (none: at once) when growing and the highest of
the scale-down window when shrinking, so a pool grows fast and shrinks slowly. The router
exports the result (`switchyard_router_pool_desired_engines`) for KEDA or an HPA, and shows it
in `switchyard status`. Removing an engine is a drain (its turns finish), by whoever scales.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pydantic
from prometheus_client import Gauge

from services.common.config import StrictModel
from services.common.stats import nearest_rank
from services.router.registry import EngineState
from services.router.saturation import SaturationSection

DESIRED = Gauge(
    "switchyard_router_pool_desired_engines",
    "Engines each pool should have by its load (the autoscaling signal, stabilised).",
    ["pool"],
)
CURRENT = Gauge(
    "switchyard_router_pool_engines", "Engines serving in each pool (routable, not draining).",
    ["pool"],
)  # fmt: skip


class PoolBounds(StrictModel):
    min_engines: int = pydantic.Field(1, ge=0)
    max_engines: int = pydantic.Field(1, ge=1)
    warm_standby: int = pydantic.Field(0, ge=0)  # idle engines kept beyond what load needs

    @pydantic.model_validator(mode="after")
    def _ordered(self) -> PoolBounds:
        if self.min_engines > self.max_engines:
            raise ValueError(
                f"min_engines ({self.min_engines}) is above max_engines ({self.max_engines})"
            )
        return self


class AutoscaleSection(StrictModel):
    queue_up: int = pydantic.Field(100, ge=1)
    ttft_p95_slo_seconds: float = pydantic.Field(0.7, gt=0)
    kv_up: float = pydantic.Field(0.9, gt=0, le=1)
    queue_down: int = pydantic.Field(20, ge=0)
    utilization_down: float = pydantic.Field(0.4, ge=0, le=1)
    up_stabilization_seconds: float = pydantic.Field(0.0, ge=0)
    down_stabilization_seconds: float = pydantic.Field(300.0, ge=0)
    ttft_window_seconds: float = pydantic.Field(60.0, gt=0)
    # Per pool; a pool not named keeps the engines it has (min = max = its configured count).
    pools: dict[str, PoolBounds] = pydantic.Field(default_factory=dict)


@dataclass(frozen=True)
class PoolSignal:
    engines: int  # serving now (routable, not draining)
    capacity: int  # turns one engine absorbs (its accelerator's saturation capacity)
    running: int  # turns in flight in the pool
    queued: int  # turns waiting (in the router's queue and the engines')
    kv_usage: float = 0.0  # mean KV-cache usage of its engines, 0..1
    ttft_p95: float | None = None  # seconds, over the window; None: no turn had text


@dataclass(frozen=True)
class Recommendation:
    engines: int
    reason: str


def recommend(sig: PoolSignal, bounds: PoolBounds, cfg: AutoscaleSection) -> Recommendation:
    """The engines the pool's load asks for now (before stabilisation)."""
    load = sig.running + sig.queued
    need = math.ceil(load / sig.capacity) if sig.capacity else sig.engines
    pressure = []
    if sig.queued > cfg.queue_up:
        pressure.append(f"queue {sig.queued} > {cfg.queue_up}")
    if sig.ttft_p95 is not None and sig.ttft_p95 > cfg.ttft_p95_slo_seconds:
        pressure.append(
            f"TTFT p95 {sig.ttft_p95 * 1000:.0f} ms > {cfg.ttft_p95_slo_seconds * 1000:.0f} ms"
        )
    if sig.kv_usage > cfg.kv_up:
        pressure.append(f"KV cache {sig.kv_usage:.0%} > {cfg.kv_up:.0%}")
    capacity = sig.engines * sig.capacity
    utilization = sig.running / capacity if capacity else (1.0 if load else 0.0)
    if sig.engines == 0:
        want, why = (max(1, need), f"no engine, {load} turns") if load else (0, "no engine, idle")
    elif pressure:
        want, why = max(sig.engines + 1, need), "; ".join(pressure)
    elif (
        sig.queued < cfg.queue_down
        and utilization < cfg.utilization_down
        and sig.kv_usage < cfg.utilization_down
    ):
        want = max(sig.engines - 1, need)
        why = f"idle: utilization {utilization:.0%}, queue {sig.queued}"
    else:
        want, why = sig.engines, f"steady: utilization {utilization:.0%}, queue {sig.queued}"
    if bounds.warm_standby:
        want += bounds.warm_standby
        why += f", +{bounds.warm_standby} warm"
    clamped = min(bounds.max_engines, max(bounds.min_engines, want))
    if clamped != want:
        why += f" (bounded to {bounds.min_engines}..{bounds.max_engines})"
    return Recommendation(clamped, why)


@dataclass
class Stabilizer:
    """Kubernetes HPA's stabilisation windows over one pool's recommendations."""

    up_seconds: float
    down_seconds: float
    _history: deque[tuple[float, int]] = field(default_factory=deque)

    def desired(self, now: float, recommended: int, current: int) -> int:
        self._history.append((now, recommended))
        keep = max(self.up_seconds, self.down_seconds)
        while self._history and self._history[0][0] < now - keep:
            self._history.popleft()
        if recommended > current:  # up: the lowest of the up window (all of it above current)
            window = [r for t, r in self._history if t >= now - self.up_seconds]
            return max(current, min(window, default=recommended))
        if recommended < current:  # down: the highest of the down window
            window = [r for t, r in self._history if t >= now - self.down_seconds]
            return min(current, max(window, default=recommended))
        return current


@dataclass(frozen=True)
class PoolScale:
    pool: str
    current: int
    desired: int
    reason: str


class Autoscaler:
    """Every pool's desired engines from its signals, stabilised, exported as metrics."""

    def __init__(
        self,
        cfg: AutoscaleSection,
        default_bounds: Callable[[str], PoolBounds],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._default_bounds = default_bounds  # a pool `cfg.pools` does not name
        self._clock = clock
        self._stabilizers: dict[str, Stabilizer] = {}
        self.last: dict[str, PoolScale] = {}

    def bounds(self, pool: str) -> PoolBounds:
        return self.cfg.pools.get(pool) or self._default_bounds(pool)

    def evaluate(self, signals: dict[str, PoolSignal]) -> dict[str, PoolScale]:
        now = self._clock()
        out: dict[str, PoolScale] = {}
        for pool, sig in signals.items():
            rec = recommend(sig, self.bounds(pool), self.cfg)
            stab = self._stabilizers.setdefault(
                pool,
                Stabilizer(self.cfg.up_stabilization_seconds, self.cfg.down_stabilization_seconds),
            )
            # The pool's size is what it was last asked for (engines still starting count, as
            # a Deployment's replicas do), not only those serving: else a recommendation that
            # matches the serving engines while another loads would drop the desired count at
            # once, with no stabilisation window, and the loading engine would be drained.
            last = self.last.get(pool)
            current = max(sig.engines, last.desired) if last is not None else sig.engines
            desired = stab.desired(now, rec.engines, current)
            reason = rec.reason
            if desired != rec.engines:
                reason += f"; stabilised at {desired} (recommended {rec.engines})"
            out[pool] = PoolScale(pool, sig.engines, desired, reason)
            DESIRED.labels(pool).set(desired)
            CURRENT.labels(pool).set(sig.engines)
        for gone in set(self.last) - set(out):
            self._stabilizers.pop(gone, None)
        self.last = out
        return out


class TtftWindow:
    """Times to first text over the last `seconds`, for the p95."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, ttft: float) -> None:
        self._samples.append((self._clock(), ttft))

    def p95(self) -> float | None:
        since = self._clock() - self.seconds
        while self._samples and self._samples[0][0] < since:
            self._samples.popleft()
        return nearest_rank((v for _, v in self._samples), 0.95)


def pool_signal(
    engines: list[EngineState],
    saturation: SaturationSection,
    accelerator: str,
    running: int,
    queued: int,
    ttft: TtftWindow | None = None,
) -> PoolSignal:
    """A pool's signal from its routable engines' reports and the router's own counts
    (`running`: turns it let in; `queued`: turns waiting in it), whichever is larger."""
    serving = [e for e in engines if not e.draining]
    if serving:
        capacity = round(sum(saturation.capacity_of(e) for e in serving) / len(serving))
    else:
        capacity = saturation.capacity.get(accelerator, saturation.default_capacity)
    return PoolSignal(
        engines=len(serving),
        capacity=capacity,
        running=max(running, sum(e.load.running for e in serving)),
        queued=queued + sum(e.load.waiting for e in serving),
        kv_usage=sum(e.kv_usage for e in serving) / len(serving) if serving else 0.0,
        ttft_p95=ttft.p95() if ttft is not None else None,
    )
