"""The router's registry of engines: who serves which pool, how loaded, and whether routable.

Engines register (EngineInfo + address), then push load reports and KV-cache events; the
registry keeps one `EngineState` per engine, feeds KV events to the prefix index, and tells
subscribers (the xDS publisher) whenever membership or routability changes. Between two load
reports it counts the turns it routed to an engine itself (`pending`), so a burst spreads
instead of landing on the engine that looked idlest in the last report.

An engine is routable while its last report says serving and not draining and it is not
*stale*. Silence is measured by `sweep()`, which the router calls every tick of its loop
monitor: an engine silent for longer than `stale_after` turns stale (it leaves the routable set
and Envoy's healthy endpoints, but stays registered while its stream is open) and comes back by
itself on its next report. Time the router itself spent stalled (its loop blocked or the process
frozen) is handed to `sweep` and not counted as anyone's silence: a router that wakes up after
ten seconds does not find every engine silent. Membership follows the registration stream: an
engine leaves when its stream ends (or a new registration takes its id or its address).

Not thread-safe: everything runs on the router's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from services.common.errors import InvalidArgument
from services.router.kvindex import KvIndex
from switchyard.v1 import engine_pb2

log = logging.getLogger(__name__)


@dataclass(eq=False)
class EngineState:
    """What the router knows about one engine; mutated in place as reports arrive."""

    engine_id: str  # unique in the mesh
    pool: str  # the pool it serves
    address: str  # HOST:PORT of its Inference and EngineControl services
    model: str  # served model name
    model_version: str = ""  # what the engine reports as its model version
    accelerator: str = ""  # "h100", "l4", "cpu"...
    max_model_len: int = 0  # context length in tokens (prompt + output); 0: unknown
    max_tokens_limit: int = 0  # largest sampling.max_tokens it accepts; 0: unknown
    kv_block_size: int = 16  # tokens per KV-cache block
    kv_num_blocks: int = 0  # KV-cache capacity in blocks; 0: unknown
    kv_events: bool = False  # forwards KV-cache events (precise prefix index)
    # The latest load report; the default (serving=False) until the first one arrives.
    load: engine_pb2.LoadReport = field(default_factory=engine_pb2.LoadReport)
    last_report_at: float = 0.0  # monotonic time of the latest report (registration before)
    pending: int = 0  # turns routed here since the latest load report (router's own accounting)
    routed_turns: int = 0  # turns routed here since registration
    # Derived from `load` by `update_load` (plain attributes: the scheduler reads them per pick).
    serving: bool = False  # takes new turns: serving and not draining in the latest report
    draining: bool = False  # finishing what it has, taking nothing new
    kv_usage: float = 0.0  # fraction of KV-cache blocks in use, [0, 1]
    reported_depth: int = 0  # max(in_flight, running + waiting) of the latest report
    stale: bool = False  # silent for longer than the registry's stale_after (set by sweep)

    def update_load(self, report: engine_pb2.LoadReport, now: float) -> None:
        """Take a new load report: derived fields, report time, and `pending` back to 0."""
        self.load = report
        self.last_report_at = now
        self.pending = 0
        self.draining = bool(report.draining)
        self.serving = bool(report.serving) and not self.draining
        self.kv_usage = float(report.kv_cache_usage)
        self.reported_depth = max(report.in_flight, report.running + report.waiting)

    @property
    def queue_depth(self) -> int:
        """Turns the engine has or is about to get: max(in_flight, running + waiting) from the
        latest report (`in_flight`, the turns its gRPC layer accepted, also covers turns still
        being tokenized that vLLM does not count yet), plus `pending` routed since."""
        return self.reported_depth + self.pending

    @property
    def cache_hit_rate(self) -> float:
        """Prefix-cache hit rate from the engine's cumulative token counters, [0, 1]."""
        q = self.load.prefix_cache_queries
        return float(self.load.prefix_cache_hits) / q if q else 0.0


class Registry:
    """Engines by id and by pool, their load, and change notifications."""

    def __init__(
        self,
        *,
        stale_after: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        index: KvIndex | None = None,
    ) -> None:
        if stale_after <= 0:
            raise ValueError(f"stale_after must be > 0, got {stale_after}")
        self.stale_after = stale_after
        self.clock = clock
        self.index = index if index is not None else KvIndex(clock=clock)
        self._engines: dict[str, EngineState] = {}
        self._pools: dict[str, dict[str, EngineState]] = {}
        self._subscribers: list[Callable[[], None]] = []
        self._waiters: list[asyncio.Future[None]] = []
        # Called with the pool of every load report (cheap: flow control's release check).
        self.on_load_listener: Callable[[str], None] | None = None

    # -- membership ------------------------------------------------------------------------

    def register(self, info: engine_pb2.EngineInfo, address: str) -> EngineState:
        """Add an engine, or replace it (a restart: fresh load, accounting and cache view)."""
        for what, value in (
            ("info.engine_id", info.engine_id),
            ("info.pool", info.pool),
            ("address", address),
        ):
            if not value:
                raise InvalidArgument(f"register.{what} is required")
        if info.kv_block_size <= 0:
            raise InvalidArgument(
                f"register.info.kv_block_size must be > 0, got {info.kv_block_size}"
            )
        old = self._engines.get(info.engine_id)
        if old is not None:
            self._unlink(old)
        for other in list(self._engines.values()):
            if other.address == address and other.engine_id != info.engine_id:
                # One address is one process: the engine that had it is gone (its stream will
                # close too). Two endpoints on one address would be an invalid Envoy config.
                log.warning(
                    "engine %s registered at %s, the address of %s: replacing %s",
                    info.engine_id,
                    address,
                    other.engine_id,
                    other.engine_id,
                )
                self._remove(other, f"replaced by {info.engine_id} at the same address")
        state = EngineState(
            engine_id=info.engine_id,
            pool=info.pool,
            address=address,
            model=info.model,
            model_version=info.model_version,
            accelerator=info.accelerator,
            max_model_len=info.max_model_len,
            max_tokens_limit=info.max_tokens_limit,
            kv_block_size=info.kv_block_size,
            kv_num_blocks=info.kv_num_blocks,
            kv_events=info.kv_events,
            last_report_at=self.clock(),
        )
        self._engines[state.engine_id] = state
        self._pools.setdefault(state.pool, {})[state.engine_id] = state
        self.index.add_engine(
            state.engine_id, kv_events=state.kv_events, kv_num_blocks=state.kv_num_blocks
        )
        self._notify()
        return state

    def remove(self, engine_id: str, reason: str) -> None:
        """Take an engine out (stream closed, operator); unknown ids are ignored."""
        state = self._engines.get(engine_id)
        if state is not None:
            self._remove(state, reason)

    def _remove(self, state: EngineState, reason: str) -> None:
        del self._engines[state.engine_id]
        self._unlink(state)
        self.index.remove_engine(state.engine_id)
        log.info("engine %s removed from pool %s: %s", state.engine_id, state.pool, reason)
        self._notify()

    def _unlink(self, state: EngineState) -> None:
        members = self._pools.get(state.pool)
        if members is not None and members.get(state.engine_id) is state:
            del members[state.engine_id]
            if not members:
                del self._pools[state.pool]

    def sweep(self, stalled: float = 0.0) -> tuple[list[str], list[str]]:
        """Update who is stale; returns (engines that went stale, engines back from stale).

        `stalled`: seconds the router itself was not running since the last sweep (its loop
        lag); they are not counted as the engines' silence."""
        now = self.clock()
        went: list[str] = []
        back: list[str] = []
        for e in self._engines.values():
            if stalled > 0.0:
                e.last_report_at = min(now, e.last_report_at + stalled)
            silent = now - e.last_report_at > self.stale_after
            if silent != e.stale:
                e.stale = silent
                (went if silent else back).append(e.engine_id)
        if went or back:
            self._notify()
        return went, back

    # -- events ----------------------------------------------------------------------------

    def on_load(self, engine_id: str, report: engine_pb2.LoadReport) -> bool:
        """A load report: replaces the load, resets `pending`. False for an unknown engine."""
        state = self._engines.get(engine_id)
        if state is None:
            return False
        was = state.serving
        state.update_load(report, self.clock())  # a stale engine is back at the next sweep
        if state.serving != was:
            self._notify()
        if self.on_load_listener is not None:
            self.on_load_listener(state.pool)
        return True

    def on_kv_events(self, engine_id: str, batch: engine_pb2.KvCacheEvents) -> bool:
        """A batch of KV-cache events, fed to the prefix index. False for an unknown engine.

        KV events also prove the engine alive, but not its load, so they do not refresh
        `last_report_at` (the engine sends a load report at least every heartbeat)."""
        if engine_id not in self._engines:
            return False
        self.index.apply(engine_id, batch)
        return True

    def note_routed(self, engine_id: str) -> None:
        """The router committed a turn to this engine (in-flight accounting)."""
        state = self._engines.get(engine_id)
        if state is not None:
            state.pending += 1
            state.routed_turns += 1

    # -- queries ---------------------------------------------------------------------------

    def get(self, engine_id: str) -> EngineState | None:
        return self._engines.get(engine_id)

    def engines(self, pool: str | None = None) -> list[EngineState]:
        """Every registered engine (routable or not), of one pool or all."""
        if pool is None:
            return list(self._engines.values())
        members = self._pools.get(pool)
        return list(members.values()) if members else []

    def pools(self) -> list[str]:
        """Pools with at least one registered engine."""
        return list(self._pools)

    def is_routable(self, state: EngineState) -> bool:
        """Serving, not draining, and reporting."""
        return state.serving and not state.stale

    def routable(self, pool: str | None = None) -> list[EngineState]:
        """The engines new turns may go to, of one pool or all."""
        return [e for e in self.engines(pool) if e.serving and not e.stale]

    def state_of(self, state: EngineState) -> str:
        """ "serving", "draining", "stale" (silent) or "not_serving" (loading, failed)."""
        if state.stale:
            return "stale"
        if state.draining:
            return "draining"
        return "serving" if state.serving else "not_serving"

    def indexed_blocks(self, engine_id: str) -> int:
        """Cache blocks the prefix index attributes to the engine."""
        return self.index.indexed_blocks(engine_id)

    # -- notifications ---------------------------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback()` on every join, leave, and serving/draining flip; returns a
        function that unsubscribes. Callbacks run synchronously and must be quick (schedule
        work, do not do it); an exception in one is logged and does not stop the others."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    async def wait_changed(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the next join, leave or routability change;
        False when none came."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)
        return True

    def _notify(self) -> None:
        for cb in list(self._subscribers):
            try:
                cb()
            except Exception:
                log.exception("registry subscriber %r failed", cb)
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
