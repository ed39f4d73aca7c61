"""The engine's load, as vLLM's scheduler and our gRPC layer see it, pushed to watchers.

`LoadTracker` is fed by `LoadStatLogger` (a vLLM stat logger, called after every engine step on
the event loop) and by the servicer (turns in flight, draining). Watchers of
EngineControl.WatchEvents get a report when the load changes (coalesced over a short window) and
at least every heartbeat, and KV-cache event batches in order.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from services.engine.kv_events import KvBlockLedger
from switchyard.v1 import engine_pb2

# Per-watcher buffer of KV event batches; a watcher that falls this far behind is cut off
# (its stream ends) so it resynchronises instead of silently missing events.
WATCHER_QUEUE_LIMIT = 10_000
# Usage reports kept while no registration stream is up (the oldest go first; their
# reservations then settle on the router's lease).
USAGE_OUTBOX_LIMIT = 100_000


@dataclass
class LoadState:
    """What a load report carries; mutated in place by the tracker."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0  # cumulative, tokens
    prefix_cache_hits: int = 0  # cumulative, tokens
    in_flight: int = 0
    draining: bool = False
    serving: bool = False

    def key(self) -> tuple[Any, ...]:
        """The fields whose change is worth an immediate report (counters ride along)."""
        return (
            self.running,
            self.waiting,
            round(self.kv_cache_usage, 3),
            self.in_flight,
            self.draining,
            self.serving,
        )


class Watcher:
    """One WatchEvents (or registration) stream: KV batches in order, plus a 'load changed' flag.

    A load report never waits behind KV batches: a pending one goes out first, and one goes out
    at least every heartbeat whatever else is flowing (a router takes an engine whose reports
    stop for silent). A watcher that falls `WATCHER_QUEUE_LIMIT` batches behind is cut off (its
    stream ends) so that it reconnects and resynchronises from a replay instead of silently
    missing events.
    """

    def __init__(self, tracker: LoadTracker, kv_events: bool, usage: bool = False) -> None:
        self._tracker = tracker
        self.kv_events = kv_events
        self.usage = usage  # turn usage reports (the registration stream takes them)
        self.router_id = ""  # the router replica at the other end, once it has answered
        self._queue: deque[engine_pb2.KvCacheEvents] = deque()
        self.usage_queue: deque[engine_pb2.TurnUsage] = deque()
        self._wake = asyncio.Event()
        self._load_pending = False
        self.overflowed = False

    def notify_load(self) -> None:
        self._load_pending = True
        self._wake.set()

    def push_kv(self, batch: engine_pb2.KvCacheEvents) -> None:
        if self.overflowed:
            return
        if len(self._queue) >= WATCHER_QUEUE_LIMIT:
            self.overflowed = True
        else:
            self._queue.append(batch)
        self._wake.set()

    def push_usage(self, usage: engine_pb2.TurnUsage) -> None:
        self.usage_queue.append(usage)
        self._wake.set()

    @property
    def queued(self) -> int:
        """KV batches waiting to be sent."""
        return len(self._queue)

    async def events(self, heartbeat: float) -> AsyncIterator[engine_pb2.EngineEvent]:
        self._load_pending = False
        yield engine_pb2.EngineEvent(load=self._tracker.report())
        last_load = time.monotonic()
        queue = self._queue
        usage = self.usage_queue
        while not self.overflowed:
            now = time.monotonic()
            if self._load_pending or now - last_load >= heartbeat:
                self._load_pending = False
                last_load = now
                yield engine_pb2.EngineEvent(load=self._tracker.report())
            elif usage:
                yield engine_pb2.EngineEvent(usage=usage.popleft())
            elif queue:
                yield engine_pb2.EngineEvent(kv=queue.popleft())
            else:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), last_load + heartbeat - now)
                except TimeoutError:
                    pass


class LoadTracker:
    """The engine's current load and the set of watchers to tell about it."""

    def __init__(
        self, engine_id: str, min_interval: float = 0.02, ledger: KvBlockLedger | None = None
    ) -> None:
        self.engine_id = engine_id
        # The blocks the engine holds, replayed to every new KV watcher first.
        self.ledger = ledger if ledger is not None else KvBlockLedger()
        self.state = LoadState()
        self._min_interval = min_interval
        self._watchers: set[Watcher] = set()
        self._last_key = self.state.key()
        self._last_sent = 0.0
        self._scheduled: asyncio.TimerHandle | None = None
        # Usage reports made while no registration stream was up, sent when one is.
        self._usage_outbox: deque[engine_pb2.TurnUsage] = deque(maxlen=USAGE_OUTBOX_LIMIT)

    # -- producers --------------------------------------------------------------------------

    def record_scheduler(
        self, running: int, waiting: int, kv_usage: float, queries: int, hits: int, reset: bool
    ) -> None:
        s = self.state
        s.running, s.waiting, s.kv_cache_usage = running, waiting, kv_usage
        if reset:
            s.prefix_cache_queries = s.prefix_cache_hits = 0
        s.prefix_cache_queries += queries
        s.prefix_cache_hits += hits
        self.changed()

    def add_in_flight(self, delta: int) -> None:
        self.state.in_flight += delta
        self.changed()

    def set_flags(self, *, serving: bool | None = None, draining: bool | None = None) -> None:
        if serving is not None:
            self.state.serving = serving
        if draining is not None:
            self.state.draining = draining
        self.changed()

    def publish_kv(self, batch: engine_pb2.KvCacheEvents) -> None:
        self.ledger.apply(batch)
        for w in self._watchers:
            if w.kv_events:
                w.push_kv(batch)

    def publish_usage(self, usage: engine_pb2.TurnUsage) -> None:
        """A turn's usage report for the router: to one registration stream (the stream of
        the router replica that reserved the turn, whose id prefixes the reservation id, else
        any: every replica settles against the shared ledger), or kept until one is up."""
        takers = [w for w in self._watchers if w.usage]
        if not takers:
            self._usage_outbox.append(usage)
            return
        res = usage.reservation_id
        owner = next((w for w in takers if w.router_id and res.startswith(w.router_id + "-")), None)
        (owner or takers[0]).push_usage(usage)

    # -- watchers ---------------------------------------------------------------------------

    def watch(self, kv_events: bool, usage: bool = False) -> Watcher:
        """A new watcher; with `kv_events`, its first batch replays the blocks held now; with
        `usage`, it takes the turn usage reports (and those kept meanwhile)."""
        w = Watcher(self, kv_events, usage)
        if kv_events:
            w.push_kv(self.ledger.replay())
        if usage:
            w.usage_queue.extend(self._usage_outbox)
            self._usage_outbox.clear()
        self._watchers.add(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        self._watchers.discard(w)
        if w.usage and w.usage_queue:  # not sent: keep them for the next stream
            self._usage_outbox.extend(w.usage_queue)

    def report(self) -> engine_pb2.LoadReport:
        s = self.state
        now = Timestamp()
        now.GetCurrentTime()
        return engine_pb2.LoadReport(
            engine_id=self.engine_id,
            time=now,
            running=s.running,
            waiting=s.waiting,
            kv_cache_usage=s.kv_cache_usage,
            prefix_cache_queries=s.prefix_cache_queries,
            prefix_cache_hits=s.prefix_cache_hits,
            in_flight=s.in_flight,
            draining=s.draining,
            serving=s.serving and not s.draining,
        )

    def changed(self) -> None:
        """Tell watchers, at most once per min_interval, when a significant field changed."""
        key = self.state.key()
        if key == self._last_key or self._scheduled is not None:
            return
        delay = self._last_sent + self._min_interval - time.monotonic()
        if delay <= 0:
            self._notify()
        else:
            self._scheduled = asyncio.get_running_loop().call_later(delay, self._notify)

    def _notify(self) -> None:
        self._scheduled = None
        self._last_key = self.state.key()
        self._last_sent = time.monotonic()
        for w in self._watchers:
            w.notify_load()


def load_stat_logger_factory(tracker: LoadTracker) -> Callable[..., Any]:
    """A vLLM stat-logger factory whose loggers feed `tracker` after every engine step."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class LoadStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self._tracker = tracker

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is None:
                return
            pc = scheduler_stats.prefix_cache_stats
            self._tracker.record_scheduler(
                scheduler_stats.num_running_reqs,
                scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs,
                scheduler_stats.kv_cache_usage,
                pc.queries,
                pc.hits,
                pc.reset,
            )

        def log_engine_initialized(self) -> None:
            pass

    return LoadStatLogger
