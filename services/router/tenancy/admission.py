"""Admission: a turn reserves its worst case against its tenant's (and key's) quotas before it is
routed, and settles from what the engine reports it used.

    admission = Admission(cfg.quotas, policies, tiers, ledger, router_id)
    principal, policy = admission.effective(principal)     # the tenant's tier override applied
    ticket = await admission.admit(principal, policy, prompt_tokens=812, max_tokens=256)
    ...headers ticket.headers go to the engine; on a failed pick: await admission.release(ticket)
    admission.on_usage(engine_id, usage)                   # from the engine's registry stream

The reservation is the prompt's tokens plus `max_tokens` (a resumed turn: only what is left of
its budget; its prompt was charged by the turn it continues). Over a limit: RESOURCE_EXHAUSTED
naming it, with `google.rpc.RetryInfo` and what is left. The engine serving the turn reports on
its registry stream when it accepts the turn and what it used when the turn ends, however it ends
(finished, cancelled, deadline, drained); the unused rest goes back. Reports are applied in the
background, in order, off the registry stream's loop iteration. An engine whose stream closes
has its accepted turns settled at their prompt; reservations nobody accepted expire whole (see
`ledger`).

With the ledger in Redis and Redis unreachable: `fail_open` admits turns unmetered, otherwise
they are refused with UNAVAILABLE; either way a metric counts it and the log says so (at most
every 10 s), and nothing waits longer than the Redis timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pydantic
from google.rpc import error_details_pb2
from prometheus_client import Counter, Histogram

from services.common import headers as h
from services.common.config import StrictModel
from services.common.errors import ResourceExhausted, Unavailable
from services.router.auth.config import TierConfig
from services.router.auth.principal import Principal
from services.router.tenancy.flow import FlowControl
from services.router.tenancy.ledger import Ledger, Limit, MemoryLedger, limits_of
from services.router.tenancy.policy import PolicyStore, TenantPolicy
from services.router.tenancy.redis_ledger import LedgerUnavailable, RedisLedger
from switchyard.v1 import engine_pb2

log = logging.getLogger(__name__)

# Tenants with labels of their own in metrics; the rest share "other" (bounded cardinality).
MAX_TENANT_LABELS = 100
OTHER = "other"
LOG_EVERY_SECONDS = 10.0
METERED = ".m"  # suffix of reservation ids held in the ledger
SWEEP_SECONDS = 1.0
# An attempt that ended before its first token (Envoy gave up on a slow engine after its
# per-try timeout, 5 s by default) may be retried on another engine under the same
# reservation: its end settles the reservation only if no engine accepts the turn this long
# (a turn the client cancels that early keeps its quota units this much longer).
RETRY_GRACE_SECONDS = 8.0
# Envoy ended the turn's HTTP stream (the router's ext_proc stream of the turn closes with it)
# and no engine has reported taking it: reports still on their way get this long.
CLOSE_GRACE_SECONDS = 1.0
# A sweep waking this much later than due found the router's loop stalled (a starved CPU):
# the engines' reports may be waiting unread on their streams meanwhile, so the graces above
# count only the time the loop ran (see Admission._sweep).
STALL_SECONDS = 0.25

QUOTA_DECISIONS = Counter(
    "switchyard_router_quota_decisions_total",
    "Turns checked against quotas: admitted, over_quota (by limit), unmetered (ledger down, "
    "failing open) or refused_ledger_down.",
    ["tenant", "decision", "limit"],
)
QUOTA_TOKENS = Counter(
    "switchyard_router_tenant_tokens_total",
    "Tokens charged to tenants as engines reported them (prompt and completion).",
    ["tenant", "kind"],
)
LEDGER_ERRORS = Counter(
    "switchyard_router_quota_ledger_errors_total",
    "Quota ledger operations that failed (Redis unreachable or erroring), by operation.",
    ["operation"],
)
LEDGER_SECONDS = Histogram(
    "switchyard_router_quota_reserve_seconds",
    "Time to reserve a turn's quota in the ledger.",
    ["ledger"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)


class QuotaSection(StrictModel):
    # Where the ledger lives: "" keeps it in the router (one replica); a redis:// URL shares
    # it between router replicas (`switchyard up --redis URL`).
    redis_url: str = ""
    # The most one ledger call may take (a router's event loop that stalls a few hundred ms on a
    # busy machine must not read as Redis being down).
    redis_timeout_seconds: float = pydantic.Field(1.0, gt=0, le=5)
    # Redis unreachable: false refuses metered turns (UNAVAILABLE); true admits them unmetered.
    fail_open: bool = False
    # A reservation no engine accepted within this long is refunded whole (the turn never
    # reached one); an accepted one is settled at its prompt after `max_turn_seconds`.
    accept_seconds: float = pydantic.Field(30.0, gt=0)
    max_turn_seconds: float = pydantic.Field(3600.0, gt=0)


class QuotaExceeded(ResourceExhausted):
    """Over a quota: the message names the limit; `retry_after` (None: never, the turn is
    larger than the limit) and `remaining` go to the client in the status details/metadata."""

    def __init__(self, message: str, retry_after: float | None, remaining: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.remaining = remaining

    def details(self) -> list[Any]:
        if self.retry_after is None:
            return []
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(int(self.retry_after * 1e9))
        return [info]

    def metadata(self) -> list[tuple[str, str]]:
        return [(h.QUOTA_REMAINING, self.remaining)] if self.remaining else []


def make_ledger(cfg: QuotaSection) -> Ledger:
    if cfg.redis_url:
        return RedisLedger(cfg.redis_url, timeout=cfg.redis_timeout_seconds)
    return MemoryLedger()


def remaining_header(remaining: dict[str, int], scopes: dict[str, str]) -> str:
    """ "tokens_per_minute=9100, key.requests_per_minute=4" (a key's own limits prefixed)."""
    return ", ".join(f"{scopes.get(name, '')}{name}={v}" for name, v in remaining.items())


@dataclass
class Ticket:
    """An admitted turn's reservation; `res_id` "" when nothing was reserved."""

    res_id: str = ""
    tenant: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    decision: str = "unmetered"  # "admitted", "unmetered"
    remaining: str = ""


@dataclass
class TenantStats:
    in_flight: int = 0
    admitted: int = 0
    over_quota: int = 0
    shed: int = 0
    tokens: int = 0


class Admission:
    def __init__(
        self,
        cfg: QuotaSection,
        policies: PolicyStore,
        tiers: dict[str, TierConfig],
        ledger: Ledger,
        router_id: str,
    ) -> None:
        self.cfg = cfg
        self.policies = policies
        self.ledger = ledger
        self._tiers = tiers
        self._router_id = router_id
        self._seq = itertools.count(1)
        self.stats: dict[str, TenantStats] = defaultdict(TenantStats)
        self._labels: dict[str, str] = {}
        # Reservation → tenant, for turns admitted here and not yet settled; and which engine
        # accepted which (settled at their prompt if the engine's stream closes).
        self._tenant_of: dict[str, str] = {}
        self._by_engine: dict[str, set[str]] = defaultdict(set)
        # Engines that accepted a reservation and have not reported it done. A turn Envoy retried
        # on another engine (the first too slow to accept within its per-try timeout) is accepted
        # under one reservation twice: the abandoned attempt's end must not settle what the
        # other still uses (its stream slot above all). Tokens of attempts that ended while
        # another holds the turn wait in `_spent` for the last one's report.
        self._holders: dict[str, set[str]] = {}
        self._spent: dict[str, int] = {}
        # Turns whose last attempt ended before its first token: settled after
        # RETRY_GRACE_SECONDS unless a retry is accepted meanwhile (deadline, engine, report).
        self._unaccepted_ends: dict[str, tuple[float, str, engine_pb2.TurnUsage]] = {}
        # Turns whose HTTP stream Envoy has ended: no retry can come any more.
        self._closed: set[str] = set()
        self._settling: set[str] = set()  # ended on their last engine, report queued
        self._deadline: dict[str, float] = {}  # when this replica stops waiting for a report
        self._reports: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._logged: dict[str, float] = {}
        self._principals: dict[tuple[Principal, str], Principal] = {}
        self.flow: FlowControl | None = None  # fair share under saturation (attach_flow)

    def attach_flow(self, flow: FlowControl) -> None:
        """Tell `flow` of turns' ends (counter corrections, freed slots) and count its sheds."""
        self.flow = flow

        def shed(tenant: str) -> None:
            self.stats[tenant].shed += 1

        flow.on_shed = shed

    # -- who, under which policy -------------------------------------------------------------

    def label(self, tenant: str) -> str:
        got = self._labels.get(tenant)
        if got is None:
            got = tenant if len(self._labels) < MAX_TENANT_LABELS else OTHER
            self._labels[tenant] = got
        return got

    def effective(self, principal: Principal) -> tuple[Principal, TenantPolicy]:
        """The principal with its tenant's tier override applied, and the tenant's policy."""
        policy = self.policies.get(principal.tenant)
        if policy.tier is None or policy.tier == principal.tier or policy.tier not in self._tiers:
            return principal, policy
        key = (principal, policy.tier)
        got = self._principals.get(key)
        if got is None:
            if len(self._principals) > 10_000:
                self._principals.clear()
            got = Principal(
                tenant=principal.tenant,
                tier=policy.tier,
                priority=self._tiers[policy.tier].priority,
                models=principal.models,
                key_id=principal.key_id,
                quotas=principal.quotas,
            )
            self._principals[key] = got
        return got, policy

    def limits(
        self, principal: Principal, policy: TenantPolicy
    ) -> tuple[list[Limit], dict[str, str]]:
        limits = limits_of(f"tenant:{principal.tenant}", policy.quotas)
        scopes: dict[str, str] = {}
        if principal.key_id:
            own = limits_of(f"key:{principal.key_id}", principal.quotas)
            limits += own
            scopes = {lim.name: "key." for lim in own}
        return limits, scopes

    @staticmethod
    def default_max_tokens(principal: Principal, policy: TenantPolicy) -> int:
        """The cap a turn without sampling.max_tokens gets (0: none, the engine's)."""
        caps = [c for c in (principal.quotas.default_max_tokens,
                            policy.quotas.default_max_tokens) if c]  # fmt: skip
        return min(caps) if caps else 0

    # -- admission ---------------------------------------------------------------------------

    async def admit(
        self,
        principal: Principal,
        policy: TenantPolicy,
        *,
        prompt_tokens: int,
        max_tokens: int,
        resumed: bool = False,
    ) -> Ticket:
        """Reserve the turn's worst case; raises QuotaExceeded or (ledger down, failing
        closed) Unavailable."""
        tenant = principal.tenant
        label = self.label(tenant)
        limits, scopes = self.limits(principal, policy)
        stats = self.stats[tenant]
        # Every turn gets a reservation id, so its usage report reaches the tenant's counters;
        # only metered ones (".m") are held in the ledger.
        res_id = f"{self._router_id}-{next(self._seq)}"
        if not limits:
            return self._admitted(tenant, res_id, "admitted", "")
        prompt = 0 if resumed else prompt_tokens
        tokens = prompt + max_tokens
        res_id += METERED
        start = time.perf_counter()
        try:
            verdict = await self.ledger.reserve(
                res_id, limits, tokens=tokens, prompt=prompt, lease=self.cfg.accept_seconds
            )
        except LedgerUnavailable as e:
            LEDGER_ERRORS.labels("reserve").inc()
            self._log_down(str(e))
            if self.cfg.fail_open:
                return self._admitted(tenant, res_id.removesuffix(METERED), "unmetered", "")
            QUOTA_DECISIONS.labels(label, "refused_ledger_down", "").inc()
            raise Unavailable(
                "the quota ledger is unreachable, so metered turns are refused "
                "(quotas.fail_open: false); retry shortly"
            ) from None
        LEDGER_SECONDS.labels(self.ledger.name).observe(time.perf_counter() - start)
        remaining = remaining_header(verdict.remaining, scopes)
        if not verdict.granted:
            stats.over_quota += 1
            assert verdict.limit is not None
            QUOTA_DECISIONS.labels(label, "over_quota", verdict.limit.name).inc()
            raise QuotaExceeded(verdict.describe(tokens), verdict.retry_after, remaining)
        return self._admitted(tenant, res_id, "admitted", remaining)

    def _admitted(self, tenant: str, res_id: str, decision: str, remaining: str) -> Ticket:
        s = self.stats[tenant]
        s.admitted += 1
        s.in_flight += 1
        self._tenant_of[res_id] = tenant
        self._deadline[res_id] = time.monotonic() + self.cfg.accept_seconds
        QUOTA_DECISIONS.labels(self.label(tenant), decision, "").inc()
        return self._ticket(tenant, res_id, decision, remaining)

    def _ticket(self, tenant: str, res_id: str, decision: str, remaining: str) -> Ticket:
        hdrs = []
        if res_id:
            hdrs.append((h.RESERVATION, res_id))
        if remaining:
            hdrs.append((h.QUOTA_REMAINING, remaining))
        return Ticket(res_id, tenant, hdrs, decision, remaining)

    async def release(self, ticket: Ticket) -> None:
        """A turn admitted but never sent on (no engine, shed): everything goes back."""
        log.debug("reservation %s released (never sent on)", ticket.res_id)
        self._deadline.pop(ticket.res_id, None)
        if self.flow is not None:
            self.flow.forget(ticket.res_id)
        if self._tenant_of.pop(ticket.res_id, None) is None:
            return
        self.stats[ticket.tenant].in_flight -= 1
        if ticket.res_id.endswith(METERED):
            with contextlib.suppress(LedgerUnavailable):
                await self.ledger.settle(ticket.res_id, used=0)

    def _log_down(self, why: str) -> None:
        now = time.monotonic()
        if now - self._logged.get("down", float("-inf")) >= LOG_EVERY_SECONDS:
            self._logged["down"] = now
            log.error(
                "quota ledger unreachable (%s): %s", why,
                "admitting turns unmetered (fail_open)" if self.cfg.fail_open
                else "refusing metered turns (fail closed)",
            )  # fmt: skip

    # -- what the engines report -------------------------------------------------------------

    def on_usage(self, engine_id: str, usage: engine_pb2.TurnUsage) -> None:
        """An engine's report on its registry stream: flow control's count of the pool's turns
        takes it at once; the ledger in order, in the background (it may wait on Redis)."""
        res_id = usage.reservation_id
        if not res_id:
            return
        log.debug(
            "usage %s from %s: done=%s prompt=%d completion=%d holders=%s", res_id, engine_id,
            usage.done, usage.prompt_tokens, usage.completion_tokens, self._holders.get(res_id),
        )  # fmt: skip
        if not usage.done:
            cut = self._unaccepted_ends.pop(res_id, None)
            if cut is not None:  # a retry took the turn: it settles for both attempts
                spent = cut[2].prompt_tokens + cut[2].completion_tokens
                if spent:
                    self._spent[res_id] = self._spent.get(res_id, 0) + spent
            holders = self._holders.setdefault(res_id, set())
            first = not holders
            holders.add(engine_id)
            self._by_engine[engine_id].add(res_id)
            if first:  # a retried attempt's accept changes nothing the first one did not
                if self.flow is not None:
                    self.flow.on_accept(res_id)
                self._reports.put_nowait((engine_id, usage))
            return
        self._by_engine[engine_id].discard(res_id)
        held = self._holders.get(res_id)
        if held is not None:
            held.discard(engine_id)
            if held:  # another attempt still runs the turn: it settles for both
                spent = usage.prompt_tokens + usage.completion_tokens
                self._spent[res_id] = self._spent.get(res_id, 0) + spent
                return
            del self._holders[res_id]
        if usage.completion_tokens == 0:
            # Cut before its first token (before an engine took it, or before Envoy saw that
            # one had: a stalled engine or Envoy lets the per-try timeout fire first): a retry
            # on another engine may take it yet (see RETRY_GRACE_SECONDS), unless the turn's
            # stream is over.
            grace = CLOSE_GRACE_SECONDS if res_id in self._closed else RETRY_GRACE_SECONDS
            deadline = time.monotonic() + grace
            self._unaccepted_ends[res_id] = (deadline, engine_id, usage)
            return
        self._end(engine_id, usage)

    def _end(self, engine_id: str, usage: engine_pb2.TurnUsage) -> None:
        """The turn of `usage` ended on its last engine: flow control now, the ledger queued."""
        res_id = usage.reservation_id
        log.debug("reservation %s ends on %s", res_id, engine_id)
        self._settling.add(res_id)
        spent = self._spent.pop(res_id, 0)
        if spent:
            usage = engine_pb2.TurnUsage(
                reservation_id=res_id,
                done=True,
                prompt_tokens=usage.prompt_tokens + spent,
                completion_tokens=usage.completion_tokens,
            )
        if self.flow is not None:
            self.flow.on_done(res_id, usage.completion_tokens)
        self._reports.put_nowait((engine_id, usage))

    def stream_closed(self, res_id: str) -> None:
        """Envoy ended the turn's HTTP stream, every attempt included (the turn's ext_proc
        stream to the router closes with it). An engine holding the turn reports its end
        itself; a turn no engine has reported taking was refused on the way (Envoy's own
        error, no engine answering, a client gone first): its slot frees now and
        its reservation goes back after CLOSE_GRACE_SECONDS (for reports still on their way)."""
        if res_id not in self._tenant_of or res_id in self._settling:
            return  # settled already (or released), or about to be
        self._closed.add(res_id)
        if self._holders.get(res_id):
            return
        deadline = time.monotonic() + CLOSE_GRACE_SECONDS
        log.debug("reservation %s: stream closed, no engine holds it", res_id)
        cut = self._unaccepted_ends.get(res_id)
        if cut is not None:  # an attempt was cut: no retry comes now
            self._unaccepted_ends[res_id] = (min(cut[0], deadline), cut[1], cut[2])
            return
        if self.flow is not None:
            self.flow.forget(res_id)
        nothing = engine_pb2.TurnUsage(reservation_id=res_id, done=True)
        self._unaccepted_ends[res_id] = (deadline, "", nothing)

    def engine_gone(self, engine_id: str) -> None:
        """The engine's registry stream closed: after its reports queued so far, its accepted
        turns settle at their prompt."""
        self._reports.put_nowait((engine_id, None))

    async def _apply(self, engine_id: str, usage: engine_pb2.TurnUsage | None) -> None:
        if usage is None:  # the engine's stream closed: its turns settle at their prompt
            for res_id in self._by_engine.pop(engine_id, set()):
                holders = self._holders.get(res_id)
                if holders is not None:
                    holders.discard(engine_id)
                    if holders:  # another engine runs it too (a retried turn): it settles
                        continue
                self._ended(res_id, 0)
                if res_id.endswith(METERED):
                    with contextlib.suppress(LedgerUnavailable):  # the lease settles it then
                        await self.ledger.settle_prompt(res_id)
            return
        res_id = usage.reservation_id
        if not usage.done:
            if res_id in self._deadline:
                self._deadline[res_id] = time.monotonic() + self.cfg.max_turn_seconds
            if res_id.endswith(METERED):
                await self.ledger.accept(res_id, lease=self.cfg.max_turn_seconds)
            return
        used = usage.prompt_tokens + usage.completion_tokens
        try:
            if res_id.endswith(METERED):
                await self.ledger.settle(res_id, used=used)
        finally:  # the turn ended here whatever the ledger said (its lease settles it then)
            tenant = self._ended(res_id, used)
            if tenant is not None:
                label = self.label(tenant)
                QUOTA_TOKENS.labels(label, "prompt").inc(usage.prompt_tokens)
                QUOTA_TOKENS.labels(label, "completion").inc(usage.completion_tokens)

    def _ended(self, res_id: str, used: int) -> str | None:
        log.debug("reservation %s settled here (used %d)", res_id, used)
        tenant = self._tenant_of.pop(res_id, None)
        self._deadline.pop(res_id, None)
        self._holders.pop(res_id, None)
        self._spent.pop(res_id, None)
        self._unaccepted_ends.pop(res_id, None)
        self._closed.discard(res_id)
        self._settling.discard(res_id)
        if self.flow is not None:
            self.flow.forget(res_id)
        if tenant is not None:  # admitted by this replica
            s = self.stats[tenant]
            s.in_flight -= 1
            s.tokens += used
        return tenant

    async def run(self) -> None:
        """Apply engine reports as they come, in order, and sweep expired reservations every
        second (beside it: a timed wait on the queue could lose a report to the timeout)."""
        sweeper = asyncio.create_task(self._sweep(), name="quota-sweep")
        try:
            while True:
                engine_id, usage = await self._reports.get()
                try:
                    await self._apply(engine_id, usage)
                except LedgerUnavailable as e:
                    LEDGER_ERRORS.labels("settle").inc()
                    self._log_down(str(e))  # the lease settles it once the ledger is back
                except Exception:
                    log.exception("applying a usage report from engine %s failed", engine_id)
        finally:
            sweeper.cancel()

    async def _sweep(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            stalled = now - last - SWEEP_SECONDS
            last = now
            if stalled > STALL_SECONDS:
                self._postpone(stalled, now)
            for res_id, (deadline, engine_id, usage) in list(self._unaccepted_ends.items()):
                if deadline <= now:  # no retry took it: it ends as its attempt reported
                    del self._unaccepted_ends[res_id]
                    self._end(engine_id, usage)
            for res_id in [r for r, d in self._deadline.items() if d <= now]:
                self._ended(res_id, 0)  # never reported here (the ledger's lease settles it)
            try:
                expired = await self.ledger.expire()
            except LedgerUnavailable as e:
                LEDGER_ERRORS.labels("expire").inc()
                self._log_down(str(e))
                continue
            except Exception:
                log.exception("sweeping expired quota reservations failed")
                continue
            if expired:
                log.info("%d quota reservation(s) expired unreported and were settled", expired)

    def _postpone(self, stalled: float, now: float) -> None:
        """The loop was stalled `stalled` seconds: an engine's accept or end may have arrived
        meanwhile, unread yet. Every grace is pushed back by the stall, and by at least one
        sweep, so those reports are read before a turn is taken for one no engine holds (else a
        stall frees a running turn's concurrent-stream slot and reservation)."""
        log.warning("the router's event loop stalled %.1fs: quota graces extended", stalled)
        floor = now + SWEEP_SECONDS
        for res_id, (deadline, engine_id, usage) in self._unaccepted_ends.items():
            self._unaccepted_ends[res_id] = (max(deadline + stalled, floor), engine_id, usage)
        for res_id, deadline in self._deadline.items():
            self._deadline[res_id] = max(deadline + stalled, floor)

    def queued(self, tenant: str) -> int:
        """Turns of `tenant` waiting in the router for a saturated pool (fair share)."""
        return self.flow.queued(tenant=tenant) if self.flow is not None else 0

    def waited(self, tenant: str) -> int:
        """Turns of `tenant` let through after waiting for a slot, since the router started."""
        return self.flow.waited[tenant] if self.flow is not None else 0

    async def remaining(self, principal_tenant: str) -> dict[str, int]:
        policy = self.policies.get(principal_tenant)
        limits = limits_of(f"tenant:{principal_tenant}", policy.quotas)
        try:
            return await self.ledger.remaining(limits)
        except LedgerUnavailable:
            return {}
