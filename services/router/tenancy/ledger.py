"""Quota reservations: taken at admission, settled from what the turn really used.

Every limit is a token bucket: `capacity` units, refilled at `capacity / period` per second
(tokens per minute: capacity N, period 60 s; tokens per day: period 86,400 s; requests per
minute: units are requests). Concurrent streams are a bucket that never refills: a stream's unit
comes back when it ends. A turn reserves, atomically across all its limits (the tenant's and its
key's), its prompt's tokens plus its `max_tokens`, one request and one stream; if any limit
cannot cover it, nothing is taken and the caller learns which limit and when it will be able to
(the bucket's refill time for the shortfall). No interleaving of turns can overspend: the check
and the deduction are one step (one event-loop step here, one Lua script in Redis).

When the turn ends, the engine reports what it used and the reservation settles: the unused
tokens and the stream go back. A reservation no engine accepted within `accept_seconds` (the
turn never reached one: refused later in the chain, or every engine failed) is refunded whole;
an accepted one whose engine vanished is settled at its prompt (`settle_prompt`), and one that
outlives `max_turn_seconds` likewise (a lost report).

    ledger = MemoryLedger()
    verdict = await ledger.reserve("r1", limits, tokens=1100, prompt=100, lease=30)
    await ledger.accept("r1", lease=3600)
    await ledger.settle("r1", used=420)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.router.auth.principal import Quotas

MINUTE = 60.0
DAY = 86_400.0
# Retry hint for a concurrency limit (no refill rate to compute one from).
STREAM_RETRY_SECONDS = 1.0

TOKENS, REQUESTS, STREAMS = "tokens", "requests", "streams"


@dataclass(frozen=True)
class Limit:
    scope: str  # "tenant:acme", "key:0123abcd4567"
    name: str  # "tokens_per_minute", "tokens_per_day", "requests_per_minute", "concurrent_streams"
    capacity: int
    period: float  # seconds to refill from empty; 0: never refills (concurrency)
    unit: str  # TOKENS, REQUESTS or STREAMS

    @property
    def key(self) -> str:
        return f"{self.scope}:{self.name}"

    def amount(self, tokens: int) -> int:
        return tokens if self.unit == TOKENS else 1


def limits_of(scope: str, q: Quotas) -> list[Limit]:
    """The limits a `Quotas` sets (its zero fields are unlimited)."""
    out = []
    for name, period, unit in (
        ("tokens_per_minute", MINUTE, TOKENS),
        ("tokens_per_day", DAY, TOKENS),
        ("requests_per_minute", MINUTE, REQUESTS),
        ("concurrent_streams", 0.0, STREAMS),
    ):
        capacity = getattr(q, name)
        if capacity:
            out.append(Limit(scope, name, capacity, period, unit))
    return out


@dataclass(frozen=True)
class Verdict:
    granted: bool
    # When refused: the limit that refused, and seconds until it could cover the turn
    # (None: it never can, the turn needs more than the limit's whole capacity).
    limit: Limit | None = None
    retry_after: float | None = None
    # Each limit's remaining units (after the reservation when granted).
    remaining: dict[str, int] = field(default_factory=dict)

    def describe(self, tokens: int) -> str:
        assert self.limit is not None
        lim = self.limit
        who = lim.scope.replace(":", " ", 1)
        if self.retry_after is None:
            return (
                f"the turn needs {tokens} tokens (prompt + max_tokens), more than {who}'s whole "
                f"{lim.name} limit of {lim.capacity}: lower sampling.max_tokens or the prompt"
            )
        need = lim.amount(tokens)
        left = self.remaining.get(lim.name, 0)
        what = f"{need} {lim.unit}" if lim.unit == TOKENS else f"one more {lim.unit[:-1]}"
        return (
            f"{who} is over its {lim.name} quota ({lim.capacity}): the turn needs {what}, "
            f"{left} left; retry in {self.retry_after:.1f}s"
        )


class Ledger(Protocol):
    name: str

    async def reserve(
        self, res_id: str, limits: Sequence[Limit], *, tokens: int, prompt: int, lease: float
    ) -> Verdict: ...

    async def accept(self, res_id: str, *, lease: float) -> bool: ...

    async def settle(self, res_id: str, *, used: int) -> bool: ...

    async def settle_prompt(self, res_id: str) -> bool: ...

    async def expire(self) -> int: ...

    async def remaining(self, limits: Sequence[Limit]) -> dict[str, int]: ...

    async def close(self) -> None: ...


@dataclass
class _Bucket:
    level: float
    stamp: float

    def fill(self, lim: Limit, now: float) -> float:
        if lim.period > 0 and self.level < lim.capacity:
            self.level = min(
                lim.capacity, self.level + (now - self.stamp) * lim.capacity / lim.period
            )
        self.stamp = now
        return self.level


@dataclass
class _Reservation:
    limits: tuple[Limit, ...]
    tokens: int
    prompt: int
    deadline: float
    accepted: bool = False


class MemoryLedger:
    """The ledger in the router's memory: the embedded default (one router replica)."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._open: dict[str, _Reservation] = {}

    def _bucket(self, lim: Limit, now: float) -> _Bucket:
        b = self._buckets.get(lim.key)
        if b is None:
            b = self._buckets[lim.key] = _Bucket(float(lim.capacity), now)
        return b

    async def reserve(
        self, res_id: str, limits: Sequence[Limit], *, tokens: int, prompt: int, lease: float
    ) -> Verdict:
        now = self._clock()
        levels = [self._bucket(lim, now).fill(lim, now) for lim in limits]
        for lim, level in zip(limits, levels, strict=True):
            need = lim.amount(tokens)
            if need > level:
                remaining = {x.name: int(v) for x, v in zip(limits, levels, strict=True)}
                if need > lim.capacity:
                    return Verdict(False, lim, None, remaining)
                wait = (need - level) * lim.period / lim.capacity if lim.period else 0.0
                return Verdict(
                    False, lim, max(wait, 0.001) if lim.period else STREAM_RETRY_SECONDS, remaining
                )
        remaining = {}
        for lim in limits:
            b = self._buckets[lim.key]
            b.level -= lim.amount(tokens)
            remaining[lim.name] = int(b.level)
        self._open[res_id] = _Reservation(tuple(limits), tokens, prompt, now + lease)
        return Verdict(True, remaining=remaining)

    async def accept(self, res_id: str, *, lease: float) -> bool:
        r = self._open.get(res_id)
        if r is None:
            return False
        r.accepted, r.deadline = True, self._clock() + lease
        return True

    def _refund(self, r: _Reservation, used: int) -> None:
        now = self._clock()
        for lim in r.limits:
            if lim.unit == REQUESTS:
                continue  # a request was made, whatever came of it
            back = max(0, r.tokens - used) if lim.unit == TOKENS else 1
            b = self._bucket(lim, now)
            b.fill(lim, now)
            b.level = min(float(lim.capacity), b.level + back)

    async def settle(self, res_id: str, *, used: int) -> bool:
        r = self._open.pop(res_id, None)
        if r is None:
            return False  # settled already (or expired): a report is applied once
        self._refund(r, used)
        return True

    async def settle_prompt(self, res_id: str) -> bool:
        r = self._open.get(res_id)
        if r is None:
            return False
        return await self.settle(res_id, used=r.prompt if r.accepted else 0)

    async def expire(self) -> int:
        now = self._clock()
        done = [(k, r) for k, r in self._open.items() if r.deadline <= now]
        for k, r in done:
            del self._open[k]
            self._refund(r, r.prompt if r.accepted else 0)
        return len(done)

    async def remaining(self, limits: Sequence[Limit]) -> dict[str, int]:
        now = self._clock()
        return {lim.name: int(self._bucket(lim, now).fill(lim, now)) for lim in limits}

    async def close(self) -> None:
        pass
