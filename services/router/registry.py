"""The router's registry of engines: who serves which pool, how loaded, and whether routable.

Engines register (EngineInfo + address), then push load reports and KV-cache events; the
registry keeps one `EngineState` per engine, feeds KV events to the prefix index, and tells
subscribers (the xDS publisher) whenever membership or routability changes. Between two load
reports it counts the turns it routed to an engine itself (`pending`), so a burst spreads
instead of landing on the engine that looked idlest in the last report.

An engine is routable while its last report says serving and not draining and that report is
younger than `stale_after`; `sweep()` (called periodically) removes engines silent for longer.
Not thread-safe: everything runs on the router's event loop.
"""

from __future__ import annotations

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
        state = EngineState(
            engine_id=info.engine_id,
            pool=info.pool,
            address=address,
            model=info.model,
            model_version=info.model_version,
            accelerator=info.accelerator,
            max_model_len=info.max_model_len,
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
        """Take an engine out (stream closed, silent, operator); unknown ids are ignored."""
        state = self._engines.pop(engine_id, None)
        if state is None:
            return
        self._unlink(state)
        self.index.remove_engine(engine_id)
        log.info("engine %s removed from pool %s: %s", engine_id, state.pool, reason)
        self._notify()

    def _unlink(self, state: EngineState) -> None:
        members = self._pools.get(state.pool)
        if members is not None and members.get(state.engine_id) is state:
            del members[state.engine_id]
            if not members:
                del self._pools[state.pool]

    def sweep(self) -> list[str]:
        """Remove engines silent for longer than `stale_after`; returns their ids."""
        cutoff = self.clock() - self.stale_after
        gone = [e.engine_id for e in self._engines.values() if e.last_report_at < cutoff]
        for engine_id in gone:
            self.remove(engine_id, f"silent for more than {self.stale_after:g}s")
        return gone

    # -- events ----------------------------------------------------------------------------

    def on_load(self, engine_id: str, report: engine_pb2.LoadReport) -> bool:
        """A load report: replaces the load, resets `pending`. False for an unknown engine."""
        state = self._engines.get(engine_id)
        if state is None:
            return False
        was = state.serving
        state.update_load(report, self.clock())
        if state.serving != was:
            self._notify()
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

    def is_stale(self, state: EngineState) -> bool:
        """Silent for longer than `stale_after` (sweep will remove it)."""
        return self.clock() - state.last_report_at > self.stale_after

    def is_routable(self, state: EngineState) -> bool:
        """Serving, not draining, and reporting."""
        return state.serving and not self.is_stale(state)

    def routable(self, pool: str | None = None) -> list[EngineState]:
        """The engines new turns may go to, of one pool or all."""
        cutoff = self.clock() - self.stale_after
        return [e for e in self.engines(pool) if e.serving and e.last_report_at >= cutoff]

    def state_of(self, state: EngineState) -> str:
        """ "serving", "draining", "stale" (silent) or "not_serving" (loading, failed)."""
        if self.is_stale(state):
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

    def _notify(self) -> None:
        for cb in list(self._subscribers):
            try:
                cb()
            except Exception:
                log.exception("registry subscriber %r failed", cb)
