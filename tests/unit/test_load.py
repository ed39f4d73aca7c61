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
    replay = (await next_event(with_kv)).kv  # first, what the engine holds (nothing yet)
    assert replay.sequence == 0 and [e.WhichOneof("event") for e in replay.events] == ["cleared"]
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
    assert w.queued == 1  # the replay only


def stored(hashes, parent=b"", bs=2, first_token=0):
    return engine_pb2.KvCacheEvent(
        stored=engine_pb2.BlockStored(
            block_hashes=hashes,
            parent_block_hash=parent,
            token_ids=list(range(first_token, first_token + bs * len(hashes))),
            block_size=bs,
        )
    )


def removed(hashes):
    return engine_pb2.KvCacheEvent(removed=engine_pb2.BlockRemoved(block_hashes=hashes))


async def test_a_new_watcher_first_gets_the_blocks_the_engine_holds_parents_first():
    t = LoadTracker("e1")
    t.publish_kv(engine_pb2.KvCacheEvents(sequence=1, events=[stored([b"a", b"b", b"c"])]))
    t.publish_kv(
        engine_pb2.KvCacheEvents(
            sequence=2, events=[stored([b"x"], parent=b"b", first_token=100), removed([b"c"])]
        )
    )
    # A removed parent: its children cannot be reached, so they are not replayed.
    t.publish_kv(engine_pb2.KvCacheEvents(sequence=3, events=[stored([b"q"], parent=b"gone")]))
    events = t.watch(kv_events=True).events(heartbeat=10)
    await next_event(events)  # the load report
    replay = (await next_event(events)).kv
    assert replay.sequence == 3  # the next live batch (4) follows without a gap
    kinds = [e.WhichOneof("event") for e in replay.events]
    assert kinds[0] == "cleared"
    blocks = [(e.stored.block_hashes[0], e.stored.parent_block_hash) for e in replay.events[1:]]
    assert blocks == [(b"a", b""), (b"b", b"a"), (b"x", b"b")]
    assert list(replay.events[3].stored.token_ids) == [100, 101]


async def test_replay_rebuilds_a_routers_prefix_index():
    from services.router.kvindex import KvIndex, block_hashes

    t = LoadTracker("e1")
    prompt = list(range(64))
    hashes = [bytes([i]) for i in range(4)]
    t.publish_kv(
        engine_pb2.KvCacheEvents(
            sequence=7,
            events=[
                engine_pb2.KvCacheEvent(
                    stored=engine_pb2.BlockStored(
                        block_hashes=hashes, token_ids=prompt, block_size=16
                    )
                )
            ],
        )
    )
    idx = KvIndex()  # a router that just restarted: it knows nothing
    idx.add_engine("e1", kv_events=True, kv_num_blocks=100)
    idx.apply("e1", t.ledger.replay())
    assert idx.indexed_blocks("e1") == 4
    assert idx.match(block_hashes(prompt, 16), ["e1"]) == {"e1": 4}


async def test_the_ledger_is_bounded_oldest_out():
    from services.engine.kv_events import KvBlockLedger

    ledger = KvBlockLedger(max_blocks=2)
    ledger.apply(engine_pb2.KvCacheEvents(sequence=1, events=[stored([b"a", b"b", b"c"])]))
    assert len(ledger) == 2
    ledger.apply(
        engine_pb2.KvCacheEvents(
            sequence=2, events=[engine_pb2.KvCacheEvent(cleared=engine_pb2.AllBlocksCleared())]
        )
    )
    assert len(ledger) == 0


async def test_load_reports_do_not_wait_behind_kv_batches_nor_starve():
    t = LoadTracker("e1", min_interval=0.0)
    events = t.watch(kv_events=True).events(heartbeat=0.2)
    await next_event(events)
    await next_event(events)  # replay
    for seq in range(1, 50):
        t.publish_kv(engine_pb2.KvCacheEvents(sequence=seq))
    t.add_in_flight(1)
    ev = await next_event(events)
    assert ev.HasField("load") and ev.load.in_flight == 1  # ahead of 49 queued batches


async def test_a_heartbeat_goes_out_even_while_kv_batches_keep_flowing():
    t = LoadTracker("e1")
    events = t.watch(kv_events=True).events(heartbeat=0.1)
    await next_event(events)
    loads = 0
    for seq in range(1, 40):  # a batch every 10 ms, for 0.4 s, and no load change
        t.publish_kv(engine_pb2.KvCacheEvents(sequence=seq))
        ev = await next_event(events)
        loads += ev.HasField("load")
        await asyncio.sleep(0.01)
    assert loads >= 2


async def test_the_replay_keeps_the_cache_salt_of_a_prompts_first_block():
    t = LoadTracker("e1")
    ev = stored([b"a", b"b"])
    ev.stored.cache_salt = "tenant:acme"
    t.publish_kv(engine_pb2.KvCacheEvents(sequence=1, events=[ev]))
    events = t.watch(kv_events=True).events(heartbeat=10)
    await next_event(events)
    replay = (await next_event(events)).kv
    assert [e.stored.cache_salt for e in replay.events[1:]] == ["tenant:acme", ""]


def test_the_salt_is_read_from_vllms_extra_keys():
    from types import SimpleNamespace

    from services.engine.kv_events import _cache_salt

    assert _cache_salt(SimpleNamespace(extra_keys=[("tenant:acme",), None])) == "tenant:acme"
    with_lora = SimpleNamespace(extra_keys=[("my-lora", ("mm", 0), "group:x")], lora_name="my-lora")
    assert _cache_salt(with_lora) == "group:x"
    assert _cache_salt(SimpleNamespace(extra_keys=None)) == ""


async def test_usage_reports_go_to_the_registration_stream_or_wait_for_one():
    t = LoadTracker("e1")
    t.publish_usage(engine_pb2.TurnUsage(reservation_id="r1"))  # no stream up: kept
    plain = t.watch(kv_events=False)  # an operator's WatchEvents: no usage reports
    reg = t.watch(kv_events=False, usage=True)
    assert [u.reservation_id for u in reg.usage_queue] == ["r1"]
    t.publish_usage(engine_pb2.TurnUsage(reservation_id="r2", done=True))
    assert [u.reservation_id for u in reg.usage_queue] == ["r1", "r2"]
    assert not plain.usage_queue
    events = reg.events(heartbeat=10)
    await next_event(events)  # the load report first
    assert (await next_event(events)).usage.reservation_id == "r1"
    t.unwatch(reg)  # the stream broke: what it had not sent waits for the next one
    again = t.watch(kv_events=False, usage=True)
    assert [u.reservation_id for u in again.usage_queue] == ["r2"]
