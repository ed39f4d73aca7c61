"""How late a service's event loop runs what it was asked to: its own stall detector.

`watch_loop` wakes every `interval` seconds and reports how much later than asked it woke (the
lag: time the loop spent on something else, or the whole process frozen). Services export it as
a histogram; the router also hands it to its registry's sweep, so that its own stall is never
mistaken for its engines' silence.

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
