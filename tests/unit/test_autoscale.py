"""The autoscaling signal (services/router/autoscale.py): the decision rules, per-accelerator
capacity, bounds and warm standbys, and HPA-like stabilisation (up fast, down slowly)."""

from __future__ import annotations

import pytest

from services.router.autoscale import (
    Autoscaler,
    AutoscaleSection,
    PoolBounds,
    PoolSignal,
    Stabilizer,
    TtftWindow,
    pool_signal,
    recommend,
)
from services.router.registry import Registry
from services.router.saturation import SaturationSection
from services.router.testing import make_engine

CFG = AutoscaleSection()
WIDE = PoolBounds(min_engines=1, max_engines=10)


def sig(engines=2, capacity=16, running=10, queued=0, kv=0.3, ttft=0.2):
    return PoolSignal(engines, capacity, running, queued, kv, ttft)


@pytest.mark.parametrize(
    ("signal", "engines", "why"),
    [
        # Pressure: at least one more, and as many as the turns need at the capacity.
        (sig(queued=130), 9, "queue 130 > 100"),  # ceil((10 + 130) / 16)
        (sig(running=20, queued=101), 8, "queue 101 > 100"),  # ceil(121 / 16) = 8
        (sig(ttft=0.9), 3, "TTFT p95 900 ms > 700 ms"),
        (sig(kv=0.95), 3, "KV cache 95% > 90%"),
        # Idle: one less, never below what the turns need.
        (sig(running=3, queued=2), 1, "idle: utilization 9%, queue 2"),
        (sig(engines=4, running=20, queued=0, kv=0.1), 3, "idle"),
        # Neither: as it is.
        (sig(running=20, queued=30), 2, "steady"),
        (sig(running=5, queued=19, kv=0.5), 2, "steady"),  # KV above the idle bar
        # No engine: one as soon as there is a turn; none while idle.
        (sig(engines=0, running=0, queued=3), 1, "no engine, 3 turns"),
    ],
)
def test_the_rules(signal, engines, why):
    rec = recommend(signal, WIDE, CFG)
    assert rec.engines == engines and why in rec.reason, rec


def test_an_h100_engine_absorbs_more_than_an_l4_one():
    busy = {"running": 60, "queued": 120}
    assert recommend(sig(capacity=64, **busy), WIDE, CFG).engines == 3  # ceil(180 / 64)
    assert recommend(sig(capacity=16, **busy), WIDE, CFG).engines == 10  # ceil(180 / 16) = 12
    # …bounded by the pool's max (10), and said so.
    assert "bounded to 1..10" in recommend(sig(capacity=16, **busy), WIDE, CFG).reason


def test_bounds_and_warm_standbys():
    idle = sig(engines=1, running=0, queued=0, kv=0.0, ttft=None)
    assert recommend(idle, PoolBounds(min_engines=0, max_engines=4), CFG).engines == 0
    assert recommend(idle, PoolBounds(min_engines=2, max_engines=4), CFG).engines == 2
    warm = recommend(idle, PoolBounds(min_engines=0, max_engines=4, warm_standby=1), CFG)
    assert warm.engines == 1 and "+1 warm" in warm.reason
    with pytest.raises(ValueError, match=r"min_engines \(3\) is above max_engines \(2\)"):
        PoolBounds(min_engines=3, max_engines=2)


def test_up_at_once_and_down_only_after_the_window_agrees():
    s = Stabilizer(up_seconds=0, down_seconds=300)
    assert s.desired(0, 4, current=2) == 4  # up: at once
    assert s.desired(10, 2, current=4) == 4  # down: the window still holds the 4
    assert s.desired(200, 2, current=4) == 4
    assert s.desired(311, 2, current=4) == 2  # 300 s of lower recommendations
    assert s.desired(312, 2, current=2) == 2


def test_a_burst_then_idleness_end_to_end():
    now = [0.0]
    a = Autoscaler(
        AutoscaleSection(down_stabilization_seconds=60, pools={"small": WIDE}),
        lambda pool: PoolBounds(min_engines=1, max_engines=1),
        clock=lambda: now[0],
    )
    burst = sig(engines=1, running=16, queued=120)
    assert a.evaluate({"small": burst})["small"].desired == 9  # ceil(136 / 16)
    now[0] = 30
    quiet = sig(engines=2, running=1, queued=0, kv=0.05)
    got = a.evaluate({"small": quiet})["small"]
    # Two engines serve, seven more are starting: the pool is still 9 until the window agrees.
    assert got.desired == 9 and "stabilised at 9 (recommended 1)" in got.reason
    now[0] = 100
    assert a.evaluate({"small": quiet})["small"].desired == 1
    # A pool the section does not name keeps its configured engines.
    assert a.evaluate({"other": burst})["other"].desired == 1


def test_a_steady_moment_while_an_engine_starts_does_not_drop_it() -> None:
    """Queue pressure asked for a second engine; while it loads, the queue dips for a moment
    and the recommendation is the one engine serving: the desired count stays 2 (the window
    has not agreed), or the engine being started would be drained as it joins."""
    now = [0.0]
    a = Autoscaler(
        AutoscaleSection(queue_up=1, down_stabilization_seconds=5, pools={"small": WIDE}),
        lambda pool: PoolBounds(min_engines=1, max_engines=2),
        clock=lambda: now[0],
    )
    assert a.evaluate({"small": sig(engines=1, running=2, queued=2)})["small"].desired == 2
    for t in (1, 2, 3):
        now[0] = t
        steady = sig(engines=1, running=2, queued=1)  # the second engine still loading
        assert a.evaluate({"small": steady})["small"].desired == 2
    now[0] = 10  # no pressure for longer than the window: back to what serves
    assert a.evaluate({"small": sig(engines=1, running=2, queued=1)})["small"].desired == 1


def test_the_signal_from_engine_reports_and_the_routers_counts():
    reg = Registry()
    make_engine(reg, "a", running=10, waiting=5, kv_usage=0.5)
    make_engine(reg, "b", running=2, kv_usage=0.1)
    sat = SaturationSection()
    s = pool_signal(reg.routable(), sat, "cpu", running=14, queued=3)
    assert (s.engines, s.capacity, s.running, s.queued) == (2, 16, 14, 8)
    assert s.kv_usage == pytest.approx(0.3)
    none = pool_signal([], sat, "h100", running=0, queued=4)
    assert (none.engines, none.capacity) == (0, 64)


def test_the_ttft_window_forgets_old_turns():
    now = [0.0]
    w = TtftWindow(60, clock=lambda: now[0])
    assert w.p95() is None
    for i in range(100):
        w.add(i / 100)
    assert w.p95() == pytest.approx(0.94)
    now[0] = 61
    assert w.p95() is None
