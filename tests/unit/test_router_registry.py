"""The engine registry (services/router/registry.py): membership, load, notifications."""

import pytest

from services.common.errors import InvalidArgument
from services.router.kvindex import block_hashes
from services.router.registry import Registry
from services.router.testing import FakeVllm, batch, make_engine, make_info, make_load


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counting(reg: Registry) -> list[int]:
    calls = [0]

    def cb() -> None:
        calls[0] += 1

    reg.subscribe(cb)
    return calls


def test_register_builds_state_from_info():
    reg = Registry()
    e = reg.register(
        make_info(
            "e1", pool="p", max_model_len=2048, kv_block_size=128, kv_num_blocks=99, kv_events=True
        ),
        "h:1",
    )
    assert reg.get("e1") is e and reg.engines("p") == [e] and reg.engines("other") == []
    assert (e.address, e.max_model_len, e.kv_block_size, e.kv_num_blocks, e.kv_events) == (
        "h:1",
        2048,
        128,
        99,
        True,
    )
    assert not e.serving  # until its first load report
    assert reg.pools() == ["p"]


def test_reregister_replaces_state_and_cache_view():
    reg = Registry()
    old = make_engine(reg, "e1", kv_events=True)
    reg.note_routed("e1")
    p = list(range(64))
    reg.on_kv_events("e1", batch(1, FakeVllm().stored(p)))
    new = reg.register(make_info("e1", pool="p2", kv_events=True), "h:2")
    assert new is not old and reg.get("e1") is new
    assert new.pending == 0 and new.routed_turns == 0
    assert reg.engines("pool-a") == [] and reg.engines("p2") == [new]
    assert reg.index.match(block_hashes(p, 16), ["e1"]) == {}


@pytest.mark.parametrize(
    ("info", "address", "field"),
    [
        (make_info(""), "h:1", "engine_id"),
        (make_info(pool=""), "h:1", "pool"),
        (make_info(), "", "address"),
        (make_info(kv_block_size=0), "h:1", "kv_block_size"),
    ],
)
def test_register_rejects_incomplete_info(info, address, field):
    with pytest.raises(InvalidArgument, match=field):
        Registry().register(info, address)


def test_load_report_resets_pending_and_records_time():
    clock = Clock()
    reg = Registry(clock=clock)
    e = make_engine(reg, "e1", running=2, waiting=1)
    reg.note_routed("e1")
    reg.note_routed("e1")
    assert (e.pending, e.routed_turns, e.queue_depth) == (2, 2, 5)
    clock.now = 105.0
    assert reg.on_load("e1", make_load("e1", running=4, waiting=0, in_flight=6))
    assert (e.pending, e.routed_turns, e.last_report_at) == (0, 2, 105.0)
    assert e.queue_depth == 6  # in_flight covers turns vLLM has not seen yet
    assert not reg.on_load("ghost", make_load("ghost"))


def test_cache_hit_rate_and_flags():
    reg = Registry()
    e = make_engine(reg, "e1")
    assert e.cache_hit_rate == 0.0
    reg.on_load("e1", make_load("e1", queries=200, hits=50, kv_usage=0.4, draining=True))
    assert e.cache_hit_rate == 0.25 and e.kv_usage == 0.4
    assert e.draining and not e.serving
    assert reg.state_of(e) == "draining"


def test_subscribers_hear_membership_and_routability_changes_only():
    reg = Registry()
    calls = counting(reg)
    make_engine(reg, "e1", report=False)
    assert calls[0] == 1  # join
    reg.on_load("e1", make_load("e1"))
    assert calls[0] == 2  # became serving
    reg.on_load("e1", make_load("e1", running=5))
    assert calls[0] == 2  # load alone: no change to push
    reg.on_load("e1", make_load("e1", draining=True))
    assert calls[0] == 3  # draining
    reg.remove("e1", "test")
    assert calls[0] == 4  # leave
    reg.remove("e1", "again")
    assert calls[0] == 4


def test_unsubscribe_and_a_failing_subscriber_does_not_stop_others():
    reg = Registry()

    def broken() -> None:
        raise RuntimeError("boom")

    reg.subscribe(broken)
    calls = counting(reg)
    unsubscribe = reg.subscribe(lambda: calls.__setitem__(0, calls[0] + 100))
    make_engine(reg, "e1", report=False)
    assert calls[0] == 101
    unsubscribe()
    reg.remove("e1", "test")
    assert calls[0] == 102


def test_a_silent_engine_turns_stale_and_comes_back_when_it_reports_again():
    clock = Clock()
    reg = Registry(stale_after=3.0, clock=clock)
    a = make_engine(reg, "a")
    make_engine(reg, "b")
    calls = counting(reg)
    clock.now += 2.0
    reg.on_load("b", make_load("b"))
    clock.now += 1.5  # a: 3.5 s silent, b: 1.5 s
    assert reg.sweep() == (["a"], [])
    assert reg.state_of(a) == "stale" and reg.get("a") is a  # still registered
    assert [e.engine_id for e in reg.routable()] == ["b"] and calls[0] == 1
    assert reg.sweep() == ([], [])  # no change, no notification
    clock.now += 20.0  # a long freeze (SIGSTOP), then the engine reports again
    reg.on_load("a", make_load("a"))
    reg.on_load("b", make_load("b"))
    assert reg.sweep() == ([], ["a"])
    assert reg.state_of(a) == "serving" and calls[0] == 2
    assert sorted(e.engine_id for e in reg.routable()) == ["a", "b"]


def test_the_routers_own_stall_is_not_the_engines_silence():
    clock = Clock()
    reg = Registry(stale_after=3.0, clock=clock)
    make_engine(reg, "a")
    clock.now += 10.0  # the router was frozen 10 s: nobody could report meanwhile
    assert reg.sweep(stalled=10.0) == ([], [])
    assert [e.engine_id for e in reg.routable()] == ["a"]
    clock.now += 3.5  # then a really is silent
    assert reg.sweep(stalled=0.01) == (["a"], [])


def test_a_new_registration_at_a_taken_address_replaces_the_old_engine():
    reg = Registry()
    calls = counting(reg)
    make_engine(reg, "old", address="10.0.0.1:50061")
    new = reg.register(make_info("new"), "10.0.0.1:50061")
    assert reg.get("old") is None and reg.get("new") is new
    assert [e.engine_id for e in reg.engines()] == ["new"] and calls[0] >= 2


async def test_wait_changed_wakes_on_a_join_and_times_out_otherwise():
    import asyncio

    reg = Registry()
    assert not await reg.wait_changed(0.01)
    waiter = asyncio.create_task(reg.wait_changed(5.0))
    await asyncio.sleep(0)
    make_engine(reg, "a")
    assert await waiter


def test_kv_events_feed_the_index():
    reg = Registry()
    make_engine(reg, "e1", kv_events=True)
    p = list(range(48))
    assert reg.on_kv_events("e1", batch(1, FakeVllm().stored(p)))
    assert reg.indexed_blocks("e1") == 3
    assert not reg.on_kv_events("ghost", batch(1))


def test_stale_after_must_be_positive():
    with pytest.raises(ValueError, match="stale_after"):
        Registry(stale_after=0)
