"""LoadTracker and its watchers (services/engine/load.py)."""

import asyncio

from services.engine.load import LoadTracker
from switchyard.v1 import engine_pb2


async def next_event(it, timeout=1.0):
    return await asyncio.wait_for(it.__anext__(), timeout)


async def test_first_event_is_a_load_report_then_changes_follow():
    t = LoadTracker("e1", min_interval=0.0)
    w = t.watch(kv_events=False)
    events = w.events(heartbeat=10)
    first = await next_event(events)
    assert first.load.engine_id == "e1" and first.load.running == 0
    t.record_scheduler(running=3, waiting=2, kv_usage=0.5, queries=100, hits=40, reset=False)
    ev = await next_event(events)
    assert (ev.load.running, ev.load.waiting, ev.load.kv_cache_usage) == (3, 2, 0.5)
    assert (ev.load.prefix_cache_queries, ev.load.prefix_cache_hits) == (100, 40)


async def test_reports_are_coalesced_within_the_interval():
    t = LoadTracker("e1", min_interval=0.05)
    w = t.watch(kv_events=False)
    events = w.events(heartbeat=10)
    await next_event(events)
    for _ in range(1, 50):
        t.add_in_flight(1)
    ev = await next_event(events)
    assert ev.load.in_flight >= 1
    # All 49 changes arrive as at most two reports, the last one current.
    reports = [ev]
    try:
        while True:
            reports.append(await next_event(events, timeout=0.2))
    except TimeoutError:
        pass
    assert len(reports) <= 2 and reports[-1].load.in_flight == 49


async def test_heartbeat_without_changes():
    t = LoadTracker("e1")
    events = t.watch(kv_events=False).events(heartbeat=0.05)
    await next_event(events)
    ev = await next_event(events, timeout=0.5)
    assert ev.HasField("load")


async def test_kv_events_only_to_watchers_that_asked_in_order():
    t = LoadTracker("e1")
    with_kv = t.watch(kv_events=True).events(heartbeat=10)
    without = t.watch(kv_events=False).events(heartbeat=10)
    await next_event(with_kv), await next_event(without)
    for seq in (1, 2, 3):
        t.publish_kv(engine_pb2.KvCacheEvents(sequence=seq))
    got = [(await next_event(with_kv)).kv.sequence for _ in range(3)]
    assert got == [1, 2, 3]
    try:
        await next_event(without, timeout=0.1)
        raise AssertionError("a watcher without kv_events received one")
    except TimeoutError:
        pass


async def test_draining_engine_reports_not_serving():
    t = LoadTracker("e1")
    t.set_flags(serving=True)
    assert t.report().serving
    t.set_flags(draining=True)
    r = t.report()
    assert r.draining and not r.serving


async def test_unwatch_stops_delivery():
    t = LoadTracker("e1")
    w = t.watch(kv_events=True)
    t.unwatch(w)
    t.publish_kv(engine_pb2.KvCacheEvents(sequence=1))
    assert w._queue.empty()
