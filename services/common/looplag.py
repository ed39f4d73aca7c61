"""How late a service's event loop runs what it was asked to: its own stall detector.

`watch_loop` wakes every `interval` seconds and reports how much later than asked it woke (the
lag: time the loop spent on something else, or the whole process frozen). Services export it as
a histogram; the router also hands it to its registry's sweep, so that its own stall is never
mistaken for its engines' silence, and advances a `RunningClock` with it: time that passes only
while the loop runs, for timeouts that must not fire because the router itself was frozen.

    asyncio.create_task(watch_loop(0.1, on_tick))
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# Buckets for lag histograms, in seconds: 20 ms is the router's goal for p99.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


async def watch_loop(interval: float, on_tick: Callable[[float], None]) -> None:
    """Call `on_tick(lag)` after every `interval`-second sleep, until cancelled."""
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        await asyncio.sleep(interval)
        now = loop.time()
        lag = max(0.0, now - last - interval)
        last = now
        on_tick(lag)


class RunningClock:
    """Seconds the event loop ran: `watch_loop`'s ticks advance it by their interval only, so a
    stall (the process frozen, the loop blocked) adds one interval however long it lasted.

    A timeout on this clock ("no engine accepted the turn within 30 s") gives what arrived during
    a stall (queued in sockets) time to be processed after it before it fires.
    """

    def __init__(self) -> None:
        self._now = 0.0

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def __call__(self) -> float:
        return self._now
