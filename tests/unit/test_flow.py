"""Fair share under saturation, without engines: a registry of fake engine states whose load
the tests set, and the flow control's release order."""

from __future__ import annotations

import asyncio

import pytest

from services.router.registry import EngineState
from services.router.saturation import SaturationSection
from services.router.tenancy.flow import FlowControl, FlowSection, Shed


class Engines:
    """What FlowControl reads of the registry: the routable engines of a pool."""

    def __init__(self, *states: EngineState) -> None:
        self.states = list(states)

    def routable(self, pool: str | None = None) -> list[EngineState]:
        return [e for e in self.states if pool in (None, e.pool)]


def engine(depth: int = 0, accelerator: str = "cpu", kv: float = 0.0) -> EngineState:
    e = EngineState("e", "p", "127.0.0.1:1", "m", accelerator=accelerator)
    e.reported_depth, e.kv_usage, e.serving = depth, kv, True
    return e


# Capacity per engine: 4 turns for "cpu" here, so that a few turns fill it.
SAT = SaturationSection.model_validate({"capacity": {"h100": 64, "l4": 16, "cpu": 4}})


def flow(engines: Engines, **cfg: object) -> FlowControl:
    cfg.setdefault("burst", 0)  # the release order alone (burst: its own test)
    return FlowControl(FlowSection.model_validate(cfg), SAT, engines)  # type: ignore[arg-type]


def test_an_h100_engine_counts_for_more_than_an_l4_and_a_full_kv_cache_counts_as_full():
    sat = SAT
    assert sat.free_slots(engine(10, "h100")) == 54
    assert sat.free_slots(engine(10, "l4")) == 6
    assert sat.free_slots(engine(0, "h100", kv=0.95)) == 0
    assert sat.free_slots(engine(6, "cpu")) == -2  # over capacity: uses up others' room
    assert sat.pressure(engine(8, "l4")) == 0.5


async def test_a_pool_with_room_lets_turns_straight_through():
    fc = flow(Engines(engine(depth=1)))
    got = await fc.admit("p", "a", priority=0, weight=1, input_tokens=10, output_bound=10)
    assert got.waited == 0.0
    got.picked()


class Pool:
    """A saturated pool of one engine whose turns the test ends one at a time."""

    def __init__(self, **cfg: object) -> None:
        self.eng = engine(depth=4)  # cpu capacity 4: full, with turns of someone else
        self.fc = flow(Engines(self.eng), **cfg)
        self.order: list[str] = []
        self.running: list[str] = []  # reservations of the turns let through
        self._n = 0

    async def turn(self, tenant: str, priority: int = 0, weight: float = 1.0) -> None:
        self._n += 1
        res = f"r{self._n}"
        let = await self.fc.admit(
            "p", tenant, priority=priority, weight=weight, input_tokens=10, output_bound=10,
            res_id=res,
        )  # fmt: skip
        self.order.append(tenant)
        self.eng.reported_depth += 1  # routed there: the engine reports it
        self.running.append(res)
        let.picked()

    async def end_one(self) -> None:
        """A turn ends (someone else's first, then ours): a slot frees."""
        self.eng.reported_depth -= 1
        if self.running and self.eng.reported_depth < len(self.running):
            self.fc.on_done(self.running.pop(0), 10)
        self.fc.kick("p")
        await asyncio.sleep(0.005)


async def _drain_order(turns: list[tuple[str, int]]) -> list[str]:
    """Queue `turns` (tenant, priority) on a saturated pool, then free one slot at a time."""
    pool = Pool()
    tasks = []
    for tenant, prio in turns:
        tasks.append(asyncio.create_task(pool.turn(tenant, prio)))
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert pool.order == [] and pool.fc.queued() == len(turns)
    for _ in turns:
        await pool.end_one()
    await asyncio.gather(*tasks)
    return pool.order


async def test_a_flooding_tenant_does_not_starve_another():
    order = await _drain_order([("a", 0)] * 6 + [("b", 0)] * 3)
    # B's turns are released in turn with A's, not after all of A's.
    assert order[:6].count("b") == 3, order


async def test_premium_turns_start_before_free_ones():
    order = await _drain_order([("free", -10)] * 3 + [("premium", 10)] * 2)
    assert order == ["premium", "premium", "free", "free", "free"]


async def test_a_heavier_weight_gets_a_larger_share():
    pool = Pool()
    tasks = [asyncio.create_task(pool.turn("heavy", weight=2.0)) for _ in range(8)]
    tasks += [asyncio.create_task(pool.turn("light", weight=1.0)) for _ in range(8)]
    await asyncio.sleep(0.01)
    for _ in range(9):
        await pool.end_one()
    assert len(pool.order) == 9
    assert 5 <= pool.order.count("heavy") <= 7, pool.order  # about 2 of every 3
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert pool.fc.queued() == 0  # the cancelled ones left the queue


async def test_turns_this_router_let_through_count_before_the_engines_report_them():
    eng = engine(depth=0)
    fc = flow(Engines(eng))
    for i in range(4):  # on their way: no load report shows them yet
        await fc.admit(
            "p", "a", priority=0, weight=1, input_tokens=1, output_bound=1, res_id=f"r{i}"
        )
    assert fc.free_slots("p") == 0 and fc.would_wait("p")
    fc.on_done("r0", 1)  # one ended
    assert fc.free_slots("p") == 1


async def test_a_full_queue_sheds_the_lowest_band_first():
    eng = engine(depth=4)
    fc = flow(Engines(eng), max_queue=2)

    async def one(tenant: str, prio: int) -> str:
        let = await fc.admit("p", tenant, priority=prio, weight=1, input_tokens=1, output_bound=1)
        let.picked()
        return tenant

    free = [asyncio.create_task(one("free", -10)) for _ in range(2)]
    await asyncio.sleep(0.01)
    premium = asyncio.create_task(one("premium", 10))
    await asyncio.sleep(0.01)
    shed = [t for t in free if t.done()]
    assert len(shed) == 1 and isinstance(shed[0].exception(), Shed)
    assert "higher-priority turns took its place" in str(shed[0].exception())
    with pytest.raises(Shed, match="queue is full"):  # a free turn cannot push out anyone now
        await one("free", -10)
    eng.reported_depth = 0
    fc.kick("p")
    assert await premium == "premium"
    for t in free:
        if not t.done():
            assert await t == "free"


async def test_a_turn_waits_no_longer_than_its_limit_then_is_shed_with_a_retry_delay():
    fc = flow(Engines(engine(depth=4)), max_wait_seconds=0.05)
    with pytest.raises(Shed) as e:
        await fc.admit("p", "a", priority=0, weight=1, input_tokens=1, output_bound=1)
    assert "waited 0.1s for a slot" in str(e.value) or "waited 0.0s" in str(e.value)
    assert e.value.retry_after > 0
    assert fc.queued() == 0


async def test_without_routable_engines_nothing_waits():
    fc = flow(Engines())
    got = await fc.admit("p", "a", priority=0, weight=1, input_tokens=1, output_bound=1)
    assert got.waited == 0.0


async def flooded_by_a() -> tuple[EngineState, FlowControl]:
    """A pool of capacity 4 with a burst of 1, all four slots taken by tenant A."""
    eng = engine(depth=0)
    fc = flow(Engines(eng), burst=0.25)
    for i in range(4):
        await fc.admit("p", "a", priority=0, weight=1, input_tokens=1, output_bound=1,
                       res_id=f"a{i}")  # fmt: skip
    eng.reported_depth = 4
    return eng, fc


async def test_a_tenant_under_its_share_starts_at_once_in_a_pool_another_floods():
    eng, fc = await flooded_by_a()
    assert fc.would_wait("p")
    # B holds none of its share (2 of 4): it goes one over capacity, at once.
    got = await fc.admit("p", "b", priority=0, weight=1, input_tokens=1, output_bound=1,
                         res_id="b0")  # fmt: skip
    assert got.waited == 0.0
    eng.reported_depth = 5
    # A, over its share, waits; so does B now that the burst is used.
    with pytest.raises(Shed):
        await fc.admit("p", "a", priority=0, weight=1, input_tokens=1, output_bound=1,
                       max_wait=0.05)  # fmt: skip
    with pytest.raises(Shed):
        await fc.admit("p", "b", priority=0, weight=1, input_tokens=1, output_bound=1,
                       max_wait=0.05)  # fmt: skip


async def test_a_burst_slot_goes_to_the_tenants_own_oldest_waiting_turn():
    eng, fc = await flooded_by_a()
    await fc.admit(
        "p", "b", priority=0, weight=1, input_tokens=1, output_bound=1, res_id="b0"
    )  # fmt: skip  (B's burst: one over capacity)
    eng.reported_depth = 5
    order: list[str] = []

    async def turn(label: str) -> None:
        await fc.admit("p", "b", priority=0, weight=1, input_tokens=1, output_bound=1,
                       res_id=label)  # fmt: skip
        order.append(label)

    older = asyncio.create_task(turn("b1"))  # the burst is used: it waits
    await asyncio.sleep(0.01)
    assert order == [] and fc.queued("b") == 1
    fc.on_done("a0", 1)  # one of A's turns ends; the engine's report still counts it
    newer = asyncio.create_task(turn("b2"))
    await asyncio.sleep(0.01)
    # The burst has room again: B's waiting turn takes it, not the one that just came.
    assert order == ["b1"] and fc.queued("b") == 1
    newer.cancel()
    await asyncio.gather(older, newer, return_exceptions=True)


async def test_a_turn_no_engine_accepted_stops_counting_and_counts_again_if_one_does(
    monkeypatch: pytest.MonkeyPatch,
):
    from services.router.tenancy import flow as flow_module

    monkeypatch.setattr(flow_module, "UNACCEPTED_SECONDS", 0.02)
    fc = flow(Engines(engine(depth=0)))
    for i in range(4):  # e.g. refused by Envoy after the router: never accepted
        await fc.admit(
            "p", "a", priority=0, weight=1, input_tokens=1, output_bound=1, res_id=f"r{i}"
        )
    assert fc.free_slots("p") == 0
    await asyncio.sleep(0.05)
    assert fc.free_slots("p") == 4  # nothing of them is running anywhere
    fc.on_accept("r0")  # (an engine took one late after all)
    assert fc.free_slots("p") == 3
    fc.on_done("r0", 1)
    assert fc.free_slots("p") == 4


async def test_a_frozen_router_does_not_age_its_unaccepted_turns():
    """The engines' accepts may sit unread in the router's sockets while its loop is frozen:
    only time the router ran counts towards giving up on them."""
    from services.common.looplag import RunningClock
    from services.router.tenancy import flow as flow_module

    clock = RunningClock()
    fc = FlowControl(
        FlowSection.model_validate({"burst": 0}),
        SAT,
        Engines(engine(depth=0)),  # type: ignore[arg-type]
        clock=clock,
    )
    for i in range(4):
        await fc.admit(
            "p", "a", priority=0, weight=1, input_tokens=1, output_bound=1, res_id=f"r{i}"
        )
    clock.advance(0.025)  # one tick, after a stall of any length
    assert fc.free_slots("p") == 0  # still counted: the pool stays full
    clock.advance(flow_module.UNACCEPTED_SECONDS)  # the router ran that long: no engine took them
    assert fc.free_slots("p") == 4


async def test_a_flooders_turns_ending_early_do_not_buy_its_backlog_a_place_ahead():
    pool = Pool()
    flood = [asyncio.create_task(pool.turn("a")) for _ in range(6)]
    await asyncio.sleep(0.01)
    for _ in range(4):  # the other tenant's turns end: A fills the engine, two of A's wait
        await pool.end_one()
    assert pool.order == ["a"] * 4 and pool.fc.queued("a") == 2
    b = asyncio.create_task(pool.turn("b"))
    await asyncio.sleep(0.01)
    # One of A's turns ends after 1 of its 10 tokens (cancelled): most of its charge comes back.
    pool.eng.reported_depth -= 1
    pool.fc.on_done(pool.running.pop(0), 1)
    await asyncio.sleep(0.005)
    assert pool.order[4:] == ["b"], pool.order
    for t in [*flood, b]:
        t.cancel()
    await asyncio.gather(*flood, b, return_exceptions=True)


async def test_turns_let_through_after_waiting_are_counted_per_tenant():
    order = await _drain_order([("a", 0)] * 2 + [("b", 0)])
    assert sorted(order) == ["a", "a", "b"]
    pool = Pool()
    t = asyncio.create_task(pool.turn("c"))
    await asyncio.sleep(0.01)
    await pool.end_one()
    await t
    assert pool.fc.waited["c"] == 1 and pool.fc.waited["a"] == 0
