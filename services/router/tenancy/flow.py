"""Fair share of a saturated pool: turns wait in the router, per tenant, and are released by a
weighted virtual token counter (VTC, Sheng et al., "Fairness in Serving Large Language
Models", OSDI '24).

While a pool has free slots (see `saturation`) and nobody waits, a turn goes straight on. Once
it is saturated, turns queue per tenant inside priority bands (the tier's priority: premium
before standard before free). Whenever a slot frees (an engine's load report, a turn's end),
the highest band is served first and, within it, the backlogged tenant with the lowest counter.
A released turn adds (input tokens + 2 x output tokens) / weight to its tenant's counter: the
output bound at release, corrected to the tokens really generated when the turn ends. A tenant
that becomes backlogged is lifted to the lowest counter of those already waiting, so idle time
banks no credit. A flooding tenant therefore gets its weight's share, never the others'.

A tenant holding less than its weighted share of the pool's turns does not wait behind a
flooder's long turns: it may go `burst` (a fraction of the pool's capacity) over it at once.

Queues are bounded: a pool holds at most `max_queue` turns, and none waits more than
`max_wait_seconds` (nor past its client's deadline): over either, the turn is shed with
RESOURCE_EXHAUSTED and a retry delay; a full queue sheds its lowest band's newest turn first to
make room for a higher one. A waiting turn keeps its Envoy ext_proc exchange open: the router
extends Envoy's message timeout for it (see extproc).

The queues and counters are per router replica (they hold turns this replica routes); quotas
are global (the ledger).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pydantic
from prometheus_client import Counter, Gauge, Histogram

from services.common.config import StrictModel
from services.common.errors import ResourceExhausted
from services.router.registry import Registry
from services.router.saturation import SaturationSection

log = logging.getLogger(__name__)

QUEUE_WAIT = Histogram(
    "switchyard_router_queue_wait_seconds",
    "Time turns waited in the router for a saturated pool (0 when they went straight on).",
    ["pool", "tenant"],
    buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30),
)
SHED = Counter(
    "switchyard_router_shed_total",
    "Turns shed under saturation: queue_full (or pushed out by a higher band), waited_too_long.",
    ["pool", "tenant", "reason"],
)
# A turn let through that no engine has accepted after this long (of the router running: see
# `RunningClock`) stops counting in flight. A backstop: a turn refused after the router (Envoy's
# own error, an engine unreachable) ends when Envoy closes its ext_proc stream
# (`forget`); an engine slow to accept, stalled on a busy machine, is no reason to let another
# turn in.
UNACCEPTED_SECONDS = 30.0
QUEUED = Gauge("switchyard_router_queued_turns", "Turns waiting in the router.", ["pool"])


class FlowSection(StrictModel):
    # Hold turns in the router while their pool is saturated, released by weighted fair share.
    enabled: bool = True
    max_queue: int = pydantic.Field(256, ge=1)  # per pool
    # The most a turn waits (Envoy's max ext_proc message timeout must be above it).
    max_wait_seconds: float = pydantic.Field(20.0, gt=0, le=25)
    # Output tokens weigh this much against input tokens in the counter (VTC: 2).
    output_weight: float = pydantic.Field(2.0, ge=0)
    # A saturated pool still takes a turn at once, up to this fraction of its capacity over it
    # (at least one turn), from a tenant holding less than its weighted share of the pool's
    # turns: a tenant arriving at a pool another floods starts now, not after a flooder's turn
    # ends. 0: never over capacity.
    burst: float = pydantic.Field(0.25, ge=0, le=1)


class Shed(ResourceExhausted):
    """A turn shed under saturation: retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def details(self) -> list[object]:
        from google.rpc import error_details_pb2

        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(int(self.retry_after * 1e9))
        return [info]


@dataclass(eq=False)
class _Waiter:
    tenant: str
    priority: int
    cost: float  # counter charge at release (already divided by the weight)
    weight: float
    future: asyncio.Future[None]
    since: float
    res_id: str = ""
    output_bound: int = 0


@dataclass(eq=False)
class _Sent:
    """A turn let through: counted in flight until it ends (its engine's report, or its
    stream's end when no engine took it), or until it goes unaccepted by any engine for
    `UNACCEPTED_SECONDS`."""

    pool: str
    tenant: str
    bound: int
    weight: float
    at: float
    accepted: bool = False
    counted: bool = True


@dataclass
class _Pool:
    # priority → tenant → its waiting turns (oldest first)
    bands: dict[int, dict[str, deque[_Waiter]]] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    tenant_in_flight: dict[str, int] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)  # each tenant's, as last seen
    waiting: int = 0
    # Turns this router let through and that have not ended (their engine's usage report):
    # exact, where the engines' load reports lag the turns still on their way.
    in_flight: int = 0
    unaccepted: deque[_Sent] = field(default_factory=deque)  # let through, oldest first

    def backlogged_min(self, exclude: str | None = None) -> float | None:
        mins = [
            self.counters.get(t, 0.0)
            for band in self.bands.values()
            for t, q in band.items()
            if q and t != exclude
        ]
        return min(mins) if mins else None


@dataclass
class Admitted:
    """A turn let through by flow control: how long it waited; call `picked()` once routed."""

    pool: str
    waited: float
    _done: Callable[[str], None]
    _called: bool = False

    def picked(self) -> None:
        if not self._called:
            self._called = True
            self._done(self.pool)


class FlowControl:
    def __init__(
        self,
        cfg: FlowSection,
        saturation: SaturationSection,
        registry: Registry,
        label: Callable[[str], str] = lambda t: t,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        # Ages unaccepted turns: the router passes a `RunningClock`, so that a turn does not
        # stop counting because the router's own loop was frozen while its engine accepted it.
        self._clock = clock
        self.saturation = saturation
        self._registry = registry
        self._label = label
        self._pools: dict[str, _Pool] = {}
        # A let-through turn's reservation → what it was let through as: its end frees its slot
        # and corrects its tenant's counter.
        self._charged: dict[str, _Sent] = {}
        self.on_shed: Callable[[str], None] | None = None  # a tenant's turn was shed
        # Per tenant, turns let through after waiting for a slot (since the router started).
        self.waited: collections.Counter[str] = collections.Counter()

    # -- the pool's state ----------------------------------------------------------------------

    def free_slots(self, pool: str) -> int | None:
        """Free slots of the pool: its engines' room as their load reports say, or less when
        this router has more turns in flight there than the reports show yet; None when it has
        no routable engine (nothing to wait for: routing says why)."""
        engines = self._registry.routable(pool)
        if not engines:
            return None
        free = self.saturation.pool_free_slots(engines)
        p = self._pools.get(pool)
        if p is not None:
            self._expire_unaccepted(p)
            reported = sum(e.queue_depth for e in engines)
            free -= max(0, p.in_flight - reported)
        return free

    def in_flight(self, pool: str) -> int:
        """Turns this router let into `pool` that have not ended (or gone unaccepted)."""
        p = self._pools.get(pool)
        if p is None:
            return 0
        self._expire_unaccepted(p)
        return p.in_flight

    def queued(self, tenant: str | None = None, pool: str | None = None) -> int:
        n = 0
        for name, p in self._pools.items():
            if pool is not None and name != pool:
                continue
            for band in p.bands.values():
                n += sum(len(q) for t, q in band.items() if tenant is None or t == tenant)
        return n

    def would_wait(self, pool: str) -> bool:
        """Whether a turn for `pool` would queue now (its ext_proc exchange then asks Envoy
        for more time before it waits)."""
        if not self.cfg.enabled:
            return False
        p = self._pools.get(pool)
        free = self.free_slots(pool)
        return free is not None and ((p is not None and p.waiting > 0) or free <= 0)

    def wait_limit(self, max_wait: float | None) -> float:
        """The longest a turn may wait: the configured limit, within its own (deadline)."""
        return min(self.cfg.max_wait_seconds, max_wait if max_wait is not None else float("inf"))

    # -- admission -----------------------------------------------------------------------------

    async def admit(
        self,
        pool: str,
        tenant: str,
        *,
        priority: int,
        weight: float,
        input_tokens: int,
        output_bound: int,
        res_id: str = "",
        max_wait: float | None = None,
    ) -> Admitted:
        """Return once the turn may be routed (at once while the pool has room); raises Shed.
        Whoever waits for it asks Envoy for more time first (`would_wait`, `wait_limit`)."""
        p = self._pools.setdefault(pool, _Pool())
        cost = (input_tokens + self.cfg.output_weight * output_bound) / weight
        p.weights[tenant] = weight
        free = self.free_slots(pool)
        straight = not self.cfg.enabled or free is None or (p.waiting == 0 and free > 0)
        burst = (
            not straight
            # Over capacity by this router's own count (the engines' reports may lag or
            # include turns that are ending), within the burst.
            and self.cfg.burst > 0
            and p.in_flight < self._capacity(pool) + self._burst(pool)
            and not any(q for prio, b in p.bands.items() if prio > priority for q in b.values())
            and self._under_share(pool, p, tenant)
        )
        if burst and (own := self._own_backlog(p, tenant)) is not None:
            # The tenant's own waiting turns come first: its oldest takes the burst's slot
            # and this one waits behind the rest.
            self._release(pool, p, own.popleft())
            QUEUED.labels(pool).set(p.waiting)
            burst = False
        if straight or burst:
            self._let_through(pool, p, tenant, cost, res_id, output_bound, weight)
            QUEUE_WAIT.labels(pool, self._label(tenant)).observe(0.0)
            return Admitted(pool, 0.0, self._picked)
        wait = self.wait_limit(max_wait)
        if wait <= 0:
            self._shed(pool, tenant, "waited_too_long")
            raise Shed(self._saturated_message(pool, "its deadline leaves no time to wait"), 1.0)
        w = _Waiter(
            tenant, priority, cost, weight, asyncio.get_running_loop().create_future(),
            time.monotonic(), res_id, output_bound,
        )  # fmt: skip
        self._make_room(pool, p, w)
        self._enqueue(p, w)
        log.debug(
            "%s waits for %s: free %s, %d in flight, %d waiting", res_id, pool, free,
            p.in_flight, p.waiting,
        )  # fmt: skip
        QUEUED.labels(pool).set(p.waiting)
        self.kick(pool)
        try:
            await asyncio.wait_for(asyncio.shield(w.future), wait)
        except TimeoutError:
            if not w.future.done():
                self._remove(p, w)
                w.future.cancel()
                QUEUED.labels(pool).set(p.waiting)
                self._shed(pool, tenant, "waited_too_long")
                raise Shed(
                    self._saturated_message(pool, f"the turn waited {wait:.1f}s for a slot"), 1.0
                ) from None
        except asyncio.CancelledError:  # the client went away while waiting
            if not w.future.done():
                self._remove(p, w)
                w.future.cancel()
                QUEUED.labels(pool).set(p.waiting)
            raise  # (a turn already let through ends through forget(), as its ticket goes)
        exc = w.future.exception() if w.future.done() and not w.future.cancelled() else None
        if exc is not None:
            raise exc
        waited = time.monotonic() - w.since
        QUEUE_WAIT.labels(pool, self._label(tenant)).observe(waited)
        return Admitted(pool, waited, self._picked)

    def _saturated_message(self, pool: str, why: str) -> str:
        return f"pool {pool} is saturated and {why}; retry shortly"

    def _shed(self, pool: str, tenant: str, reason: str) -> None:
        SHED.labels(pool, self._label(tenant), reason).inc()
        if self.on_shed is not None:
            self.on_shed(tenant)

    def _make_room(self, pool: str, p: _Pool, w: _Waiter) -> None:
        """A full queue sheds its lowest band's newest turn for a higher one, else this one."""
        if p.waiting < self.cfg.max_queue:
            return
        lowest = min((prio for prio, band in p.bands.items() if any(band.values())), default=None)
        if lowest is None or lowest >= w.priority:
            self._shed(pool, w.tenant, "queue_full")
            raise Shed(
                self._saturated_message(pool, f"its queue is full ({self.cfg.max_queue} turns)"),
                1.0,
            )
        band = p.bands[lowest]
        victim_q = max((q for q in band.values() if q), key=lambda q: q[-1].since)
        victim = victim_q.pop()
        p.waiting -= 1
        self._shed(pool, victim.tenant, "queue_full")
        victim.future.set_exception(
            Shed(self._saturated_message(pool, "higher-priority turns took its place"), 1.0)
        )

    def _enqueue(self, p: _Pool, w: _Waiter) -> None:
        band = p.bands.setdefault(w.priority, {})
        q = band.get(w.tenant)
        if q is None:
            q = band[w.tenant] = deque()
        if not q:  # newly backlogged: no credit for the time it was idle (VTC's lift)
            floor = p.backlogged_min()
            if floor is not None:
                p.counters[w.tenant] = max(p.counters.get(w.tenant, 0.0), floor)
        q.append(w)
        p.waiting += 1

    def _remove(self, p: _Pool, w: _Waiter) -> None:
        q = p.bands.get(w.priority, {}).get(w.tenant)
        if q is not None and w in q:
            q.remove(w)
            p.waiting -= 1

    def _capacity(self, pool: str) -> int:
        return self.saturation.pool_capacity(self._registry.routable(pool))

    def _burst(self, pool: str) -> int:
        if not self.cfg.burst:
            return 0
        return max(1, int(self._capacity(pool) * self.cfg.burst))

    def _under_share(self, pool: str, p: _Pool, tenant: str) -> bool:
        """Whether `tenant` holds fewer of the pool's turns than its weighted share of the
        pool's capacity among the tenants active there (in flight or waiting)."""
        active = {t for t, n in p.tenant_in_flight.items() if n > 0}
        active |= {t for band in p.bands.values() for t, q in band.items() if q}
        active.add(tenant)
        total = sum(p.weights.get(t, 1.0) for t in active)
        share = self._capacity(pool) * p.weights.get(tenant, 1.0) / total
        return p.tenant_in_flight.get(tenant, 0) + 1 <= share

    def _let_through(
        self, pool: str, p: _Pool, tenant: str, cost: float, res_id: str, bound: int, weight: float
    ) -> None:
        p.counters[tenant] = p.counters.get(tenant, 0.0) + cost
        self._count(p, tenant, 1)
        log.debug(
            "%s let through to %s: %d in flight, %d waiting", res_id, pool, p.in_flight, p.waiting
        )
        if res_id:
            sent = _Sent(pool, tenant, bound, weight, self._clock())
            self._charged[res_id] = sent
            p.unaccepted.append(sent)

    @staticmethod
    def _count(p: _Pool, tenant: str, delta: int) -> None:
        p.in_flight = max(0, p.in_flight + delta)
        n = p.tenant_in_flight.get(tenant, 0) + delta
        if n > 0:
            p.tenant_in_flight[tenant] = n
        else:
            p.tenant_in_flight.pop(tenant, None)

    def _expire_unaccepted(self, p: _Pool) -> None:
        """Stop counting turns no engine accepted in time: they were refused on the way (their
        end may never be reported) or wait in an engine that reports them itself."""
        horizon = self._clock() - UNACCEPTED_SECONDS
        q = p.unaccepted
        while q and (q[0].accepted or not q[0].counted or q[0].at < horizon):
            sent = q.popleft()
            if not sent.accepted and sent.counted:
                log.debug(
                    "a turn of %s unaccepted for %ss: no longer counted",
                    sent.tenant,
                    UNACCEPTED_SECONDS,
                )
                sent.counted = False
                self._count(p, sent.tenant, -1)

    def on_accept(self, res_id: str) -> None:
        """An engine took the turn (its usage report): it counts until it ends."""
        sent = self._charged.get(res_id)
        if sent is None or sent.accepted:
            return
        sent.accepted = True
        if not sent.counted:  # accepted after it stopped counting: it counts again
            sent.counted = True
            p = self._pools.get(sent.pool)
            if p is not None:
                self._count(p, sent.tenant, 1)

    def _ended(self, sent: _Sent) -> _Pool | None:
        p = self._pools.get(sent.pool)
        if p is not None and sent.counted:
            sent.counted = False
            self._count(p, sent.tenant, -1)
        return p

    def _picked(self, pool: str) -> None:
        """The let-through turn was routed (or refused): nothing to account; room may show."""
        p = self._pools.get(pool)
        if p is not None and p.waiting:
            self.kick(pool)

    # -- release -------------------------------------------------------------------------------

    def kick(self, pool: str | None = None) -> None:
        """Release what the pool(s) have room for (on load reports and turns' ends)."""
        for name in [pool] if pool is not None else list(self._pools):
            p = self._pools.get(name)
            if p is None or not p.waiting:
                continue
            free = self.free_slots(name)
            if free is None:  # no engine left: release everyone; routing tells them why
                free = p.waiting
            while free > 0 and p.waiting:
                w = self._next(p)
                if w is None:
                    break
                self._release(name, p, w)
                free -= 1
            QUEUED.labels(name).set(p.waiting)

    def _release(self, pool: str, p: _Pool, w: _Waiter) -> None:
        """Let a waiting turn (already taken off its queue) through."""
        p.waiting -= 1
        self.waited[w.tenant] += 1
        self._let_through(pool, p, w.tenant, w.cost, w.res_id, w.output_bound, w.weight)
        w.future.set_result(None)

    @staticmethod
    def _own_backlog(p: _Pool, tenant: str) -> deque[_Waiter] | None:
        """The tenant's queue of waiting turns in its highest band, if it has any."""
        for prio in sorted(p.bands, reverse=True):
            q = p.bands[prio].get(tenant)
            if q:
                return q
        return None

    def _next(self, p: _Pool) -> _Waiter | None:
        for prio in sorted(p.bands, reverse=True):
            band = p.bands[prio]
            backlogged = [t for t, q in band.items() if q]
            if not backlogged:
                continue
            # Ties (a newly backlogged tenant is lifted to the lowest counter) go to the
            # tenant with fewer turns in flight.
            tenant = min(
                backlogged,
                key=lambda t: (p.counters.get(t, 0.0), p.tenant_in_flight.get(t, 0)),
            )
            return band[tenant].popleft()
        return None

    def on_done(self, res_id: str, completion_tokens: int) -> None:
        """A turn ended: its slot is free, and its tenant's counter is corrected from its
        output bound to what it generated."""
        sent = self._charged.pop(res_id, None)
        if sent is None:
            return
        p = self._ended(sent)
        if p is not None and sent.tenant in p.counters:
            unused = max(0, sent.bound - completion_tokens)
            before = p.counters[sent.tenant]
            after = before - self.cfg.output_weight * unused / sent.weight
            # Counters charge each turn's output bound up front (flow control never sees the
            # tokens as they stream) and give the unused rest back at its end. A tenant that
            # became backlogged meanwhile was lifted to the counters as charged; the refund must
            # not take a tenant below it, or a flooder's turns ending early (cancelled, or at
            # their end of sequence) would buy its backlog a place ahead of the newcomer.
            others = p.backlogged_min(exclude=sent.tenant)
            if others is not None:
                after = max(after, min(before, others))
            p.counters[sent.tenant] = after
        self.kick(sent.pool)

    def forget(self, res_id: str) -> None:
        """A let-through turn that will not report its end (refused, or its report lost)."""
        sent = self._charged.pop(res_id, None)
        if sent is not None:
            self._ended(sent)
            self.kick(sent.pool)
