"""Which turns the engine takes, and the turns it has in flight: the state behind drain.

Draining stops new turns (UNAVAILABLE) while in-flight streams finish; when the grace period
runs out the remaining turns are stopped (each turn registers how: its handler stops waiting for
vLLM, which aborts the request inside vLLM) and end with FINISH_REASON_ABORTED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from services.common.errors import Unavailable
from services.engine.load import LoadTracker
from services.engine.metrics import EngineMetrics

log = logging.getLogger(__name__)


class Admission:
    def __init__(self, engine_id: str, tracker: LoadTracker, metrics: EngineMetrics) -> None:
        self.engine_id = engine_id
        self._tracker = tracker
        self._metrics = metrics
        self.loading = True  # until the runtime is built and warmed up
        self.draining = False
        # The engine's own request id (unique per turn) → what stops the turn.
        self.in_flight: dict[str, Callable[[], None]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._grace_timer: asyncio.TimerHandle | None = None

    def check(self) -> None:
        """Raise UNAVAILABLE unless a new turn may start now."""
        if self.loading:
            raise Unavailable(f"engine {self.engine_id} is still loading its model")
        if self.draining:
            raise Unavailable(f"engine {self.engine_id} is draining and takes no new turns")

    @contextmanager
    def turn(self, request_id: str, stop: Callable[[], None]) -> Iterator[None]:
        """Count a turn as in flight for the duration of the block; `stop` ends it early.
        `request_id` must be unique among turns in flight (the engine's, not the client's)."""
        self.in_flight[request_id] = stop
        self._idle.clear()
        self._metrics.in_flight.inc()
        self._tracker.add_in_flight(1)
        try:
            yield
        finally:
            self.in_flight.pop(request_id, None)
            self._metrics.in_flight.dec()
            self._tracker.add_in_flight(-1)
            if not self.in_flight:
                self._idle.set()

    def drain(self, grace: float) -> int:
        """Stop taking turns; stop what is still running after `grace` seconds."""
        self.draining = True
        self._metrics.draining.set(1)
        self._tracker.set_flags(draining=True)
        if self._grace_timer is not None:
            self._grace_timer.cancel()

        def expire() -> None:
            self._grace_timer = None
            if self.in_flight:
                log.warning("drain grace ran out: stopping %d turn(s)", len(self.in_flight))
            for stop in list(self.in_flight.values()):
                stop()

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
