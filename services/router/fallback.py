"""Graceful degradation: a turn for a saturated or engineless model spills to its fallback.

    fallbacks: {large: small}                      # model → the model to degrade to
    auth: {tiers: {free: {priority: -10, degrade: true}, premium: {priority: 10}}}

A turn asking for a model (by name or alias) whose pool has no free slot (the fair-share
count) or no serving engine goes to the model's fallback instead when its caller's tier
degrades (`auth.tiers.<tier>.degrade`; by default only `free`), the caller may use the fallback,
and the fallback's pool has room (or, when the model has no engine at all, engines). Otherwise
it waits in its pool's queue (premium waits) or, with no engine, fails saying why no fallback
took it. The Final's `served_by.degraded_reason` and the pick span say what happened, and
`switchyard_router_degraded_turns_total` counts it. One hop only: a fallback's own fallback is
never taken. Tiered names (`auto`) already choose by room and never degrade further.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from prometheus_client import Counter

from services.router.auth.principal import Principal

DEGRADED = Counter(
    "switchyard_router_degraded_turns_total",
    "Turns served by a fallback model because theirs was saturated or had no serving engine.",
    ["model", "fallback", "reason"],
)


@dataclass(frozen=True)
class Degraded:
    model: str
    pool: str
    reason: str  # for the Final and the span


class Fallbacks:
    def __init__(
        self,
        fallbacks: dict[str, str],
        pool_of: dict[str, str],
        degrading_tiers: Collection[str],
        room: Callable[[str], int | None] = lambda pool: None,
    ) -> None:
        self._fallback = dict(fallbacks)
        self._pool_of = dict(pool_of)
        self._degrading = frozenset(degrading_tiers)
        self.room = room  # a pool's free slots (None: no routable engine)

    def choose(self, model: str, pool: str, principal: Principal | None) -> Degraded | str | None:
        """The fallback that takes the turn; else, when the model is saturated or has no
        engine and a fallback exists, why it did not (a string); else None."""
        target = self._fallback.get(model)
        if target is None:
            return None
        room = self.room(pool)
        if room is not None and room > 0:
            return None  # the model's pool has room: nothing to degrade from
        why = "has no serving engine" if room is None else "is saturated"
        if principal is None or principal.tier not in self._degrading:
            tier = principal.tier if principal is not None else "none"
            return f"tier {tier} does not degrade to {target} (auth.tiers.{tier}.degrade is false)"
        if principal.models and target not in principal.models:
            return f"the caller may not use its fallback {target}"
        tpool = self._pool_of[target]
        troom = self.room(tpool)
        if troom is None or (room is not None and troom <= 0):
            return f"its fallback {target} has no room either"
        DEGRADED.labels(model, target, "no_engine" if room is None else "saturated").inc()
        return Degraded(
            target, tpool, f"{model} (pool {pool}) {why}; tier {principal.tier} degrades"
        )
