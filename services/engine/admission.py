"""Which turns the engine takes, and the turns it has in flight: the state behind drain.

Draining stops new turns (UNAVAILABLE) while in-flight streams finish; when the grace period
runs out the remaining turns are aborted and end with FINISH_REASON_ABORTED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from services.common.errors import Unavailable
from services.engine.load import LoadTracker
from services.engine.metrics import EngineMetrics


class Admission:
    def __init__(self, engine_id: str, tracker: LoadTracker, metrics: EngineMetrics) -> None:
        self.engine_id = engine_id
        self._tracker = tracker
        self._metrics = metrics
        self.loading = True  # until the runtime is built and warmed up
        self.draining = False
        self.in_flight: set[str] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._grace_timer: asyncio.TimerHandle | None = None
        self._aborts: set[asyncio.Future[None]] = set()  # keeps abort tasks alive until done

    def check(self) -> None:
        """Raise UNAVAILABLE unless a new turn may start now."""
        if self.loading:
            raise Unavailable(f"engine {self.engine_id} is still loading its model")
        if self.draining:
            raise Unavailable(f"engine {self.engine_id} is draining and takes no new turns")

    @contextmanager
    def turn(self, request_id: str) -> Iterator[None]:
        """Count a turn as in flight for the duration of the block."""
        self.in_flight.add(request_id)
        self._idle.clear()
        self._metrics.in_flight.inc()
        self._tracker.add_in_flight(1)
        try:
            yield
        finally:
            self.in_flight.discard(request_id)
            self._metrics.in_flight.dec()
            self._tracker.add_in_flight(-1)
            if not self.in_flight:
                self._idle.set()

    def drain(self, grace: float, abort: Callable[[str], Awaitable[None]]) -> int:
        """Stop taking turns; abort what is still running after `grace` seconds."""
        self.draining = True
        self._metrics.draining.set(1)
        self._tracker.set_flags(draining=True)
        if self._grace_timer is not None:
            self._grace_timer.cancel()

        def expire() -> None:
            self._grace_timer = None
            for rid in list(self.in_flight):
                task = asyncio.ensure_future(abort(rid))
                self._aborts.add(task)
                task.add_done_callback(self._aborts.discard)

        self._grace_timer = asyncio.get_running_loop().call_later(grace, expire)
        return len(self.in_flight)

    def resume(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        self.draining = False
        self._metrics.draining.set(0)
        self._tracker.set_flags(draining=False)

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no turn is in flight; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
