"""The scheduler end to end (services/router/scheduling/scheduler.py) with fake engines."""

from collections import Counter

import pytest
from prometheus_client import REGISTRY

from services.common.errors import Unavailable
from services.router.registry import Registry
from services.router.scheduling.scheduler import NoEngineAvailable, Scheduler
from services.router.sessions import SessionTable
from services.router.testing import FakeVllm, batch, make_engine, make_load, make_request


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def setup(
    *names: str, clock: Clock | None = None, **engine_kw: object
) -> tuple[Registry, Scheduler]:
    reg = Registry(stale_after=3.0, clock=clock or Clock())
    for n in names:
        make_engine(reg, n, **engine_kw)  # type: ignore[arg-type]
    return reg, Scheduler(reg, reg.index, SessionTable())


def tokens(n: int, seed: int = 0) -> list[int]:
    return [(seed * 104_729 + i) % 40_000 + 1 for i in range(n)]


def test_burst_between_load_reports_spreads_across_engines():
    reg, sched = setup("a", "b", "c", "d")
    picked = Counter(sched.pick(make_request(f"r{i}", seed=i)).engine.engine_id for i in range(12))
    assert picked == {"a": 3, "b": 3, "c": 3, "d": 3}
    assert [e.pending for e in reg.engines()] == [3, 3, 3, 3]
    reg.on_load("a", make_load("a"))
    assert reg.get("a").pending == 0  # type: ignore[union-attr]
    assert sched.pick(make_request("next", seed=99)).engine.engine_id == "a"


def test_turn_sharing_a_long_prefix_goes_to_the_engine_holding_it():
    reg, sched = setup("a", "b", "c", kv_events=True)
    held = tokens(1024)
    reg.on_kv_events("b", batch(1, FakeVllm("b").stored(held)))
    reg.on_load("b", make_load("b", running=3))  # a little busier than the others
    d = sched.pick(make_request(tokens=held[:900] + tokens(100, seed=5)))
    assert d.engine.engine_id == "b" and d.reason == "prefix"
    scores = {c.engine_id: c.scores["prefix-affinity"] for c in d.candidates}
    assert scores["b"] == pytest.approx(56 / 62) and scores["a"] == 0.0


def test_routed_prompt_attracts_its_continuation_without_kv_events():
    _reg, sched = setup("a", "b", "c")
    first = sched.pick(make_request("t1", tokens=tokens(512)))
    follow = sched.pick(make_request("t2", tokens=tokens(512) + tokens(64, seed=3)))
    assert follow.engine is first.engine and follow.reason == "prefix"


def test_session_stays_until_its_engine_is_overloaded_then_follows_the_new_one():
    reg, sched = setup("a", "b")
    convo = tokens(64)
    first = sched.pick(make_request("t1", tokens=convo, session_id="s1")).engine
    other = next(e for e in reg.engines() if e is not first)
    for turn in range(2, 5):
        convo = convo + tokens(32, seed=turn)
        d = sched.pick(make_request(f"t{turn}", tokens=convo, session_id="s1"))
        assert d.engine is first  # stays while not overloaded, though it is busier
    # The session's engine is overloaded: the turn moves...
    reg.on_load(first.engine_id, make_load(first.engine_id, running=8, waiting=40))
    convo = convo + tokens(32, seed=10)
    moved = sched.pick(make_request("t5", tokens=convo, session_id="s1"))
    assert moved.engine is other
    # ...and the next turns follow it, even once the old engine has recovered.
    reg.on_load(first.engine_id, make_load(first.engine_id))
    for turn in range(6, 9):
        convo = convo + tokens(32, seed=turn + 10)
        d = sched.pick(make_request(f"t{turn}", tokens=convo, session_id="s1"))
        assert d.engine is other


def test_draining_engines_are_never_picked_nor_fallbacks():
    reg, sched = setup("a", "b", "c")
    reg.on_load("b", make_load("b", draining=True))
    for i in range(30):
        d = sched.pick(make_request(f"r{i}", seed=i))
        assert "b" not in [d.engine.engine_id, *(f.engine_id for f in d.fallbacks)]
    assert {c.engine_id: c.filtered_by for c in d.candidates}["b"] == "not-draining"


def test_silent_engines_leave_at_the_next_sweep_and_come_back_when_they_report():
    clock = Clock()
    reg, sched = setup("a", "b", clock=clock)
    clock.now += 2.5
    reg.on_load("b", make_load("b"))
    clock.now += 1.0  # a has been silent 3.5 s > 3 s
    reg.sweep()
    for i in range(10):
        assert sched.pick(make_request(f"r{i}", seed=i)).engine.engine_id == "b"
    reg.on_load("a", make_load("a"))
    reg.sweep()
    picked = {sched.pick(make_request(f"s{i}", seed=i)).engine.engine_id for i in range(20)}
    assert picked == {"a", "b"}


def test_no_engine_available_says_why_engine_by_engine():
    reg, sched = setup("e1", "e2")
    reg.on_load("e1", make_load("e1", draining=True))
    reg.on_load("e2", make_load("e2", kv_usage=0.97))
    with pytest.raises(NoEngineAvailable) as err:
        sched.pick(make_request())
    assert isinstance(err.value, Unavailable)
    assert err.value.message == (
        "pool pool-a: 2 engines, all filtered: e1 draining, e2 kv utilization 0.97 > 0.95"
    )


def test_no_engine_available_for_an_empty_pool_and_for_a_long_prompt():
    _reg, sched = setup("e1", max_model_len=100)
    with pytest.raises(NoEngineAvailable, match="pool other: no engines registered"):
        sched.pick(make_request(pool="other"))
    with pytest.raises(NoEngineAvailable, match=r"e1 prompt 95 \+ max_tokens 16 = 111 tokens"):
        sched.pick(make_request(prompt_tokens=95))


def test_decision_to_proto_lists_every_candidate():
    reg, sched = setup("a", "b", "c", "d")
    reg.on_load("d", make_load("d", kv_usage=0.99))
    d = sched.pick(make_request(prompt_tokens=40))
    resp = d.to_proto()
    assert resp.pool == "pool-a" and resp.model == "model-a" and resp.prompt_tokens == 40
    assert resp.engine_id == d.engine.engine_id and resp.endpoint == d.engine.address
    assert list(resp.fallback_endpoints) == [f.address for f in d.fallbacks]
    assert len(resp.fallback_endpoints) == 2
    cands = {c.engine_id: c for c in resp.candidates}
    assert cands["d"].filtered_by == "kv-cap" and cands["d"].score == 0.0
    assert set(cands["a"].scores) == {
        "prefix-affinity",
        "session-affinity",
        "queue-depth",
        "kv-utilization",
    }
    assert cands[d.engine.engine_id].score == max(c.score for c in resp.candidates)


def test_candidate_span_attributes_are_one_string_per_engine():
    reg, sched = setup("a", "b", "c", "d")
    reg.on_load("d", make_load("d", kv_usage=0.99))
    d = sched.pick(make_request(prompt_tokens=40))
    attrs = d.candidate_attributes()
    assert set(attrs) == {f"switchyard.candidate.{e}" for e in "abcd"}
    assert attrs["switchyard.candidate.d"] == "filtered_by=kv-cap"
    for c in d.candidates:
        if c.filtered_by:
            continue
        fields = dict(kv.split("=") for kv in attrs[f"switchyard.candidate.{c.engine_id}"].split())
        assert list(fields) == ["score", *c.scores]  # the total first, then the profile's order
        assert float(fields["score"]) == pytest.approx(c.score, rel=1e-3)
        for name, score in c.scores.items():
            assert float(fields[name]) == pytest.approx(score, rel=1e-3, abs=1e-4)


def test_explain_only_changes_nothing():
    reg, sched = setup("a", "b")
    p = tokens(256)
    d = sched.pick(make_request(tokens=p, session_id="s1"), commit=False)
    assert not d.committed
    assert all(e.pending == 0 and e.routed_turns == 0 for e in reg.engines())
    assert sched._sessions.get("s1") is None
    assert reg.indexed_blocks(d.engine.engine_id) == 0


def test_commit_accounts_the_turn():
    reg, sched = setup("a", "b")
    d = sched.pick(make_request(tokens=tokens(256), session_id="s1"))
    assert (d.engine.pending, d.engine.routed_turns) == (1, 1)
    assert sched._sessions.get("s1") == d.engine.engine_id
    assert reg.indexed_blocks(d.engine.engine_id) == 16


def _sample(name: str, labels: dict[str, str]) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0


def test_plugin_timings_and_decisions_are_counted():
    reg, sched = setup("a", "b", pool="metrics-pool")
    labels = {
        "extension_point": "scorer",
        "plugin_type": "queue-depth-scorer",
        "plugin_name": "queue-depth",
    }
    before = _sample("switchyard_router_plugin_duration_seconds_count", labels)
    sched.pick(make_request(pool="metrics-pool", seed=1))
    reg.on_load("a", make_load("a", running=5))
    reg.on_load("b", make_load("b"))
    d = sched.pick(make_request(pool="metrics-pool", seed=2))
    assert d.engine.engine_id == "b" and d.reason == "load"
    assert _sample("switchyard_router_plugin_duration_seconds_count", labels) == before + 2
    assert (
        _sample("switchyard_router_decisions_total", {"pool": "metrics-pool", "reason": "load"})
        >= 1
    )
    with pytest.raises(NoEngineAvailable):
        sched.pick(make_request(pool="metrics-pool-empty"))
    assert (
        _sample(
            "switchyard_router_decisions_total",
            {"pool": "metrics-pool-empty", "reason": "unavailable"},
        )
        == 1
    )


def test_single_candidate_and_ties_are_labelled():
    _reg, sched = setup("only")
    assert sched.pick(make_request()).reason == "only-candidate"
    _reg, sched = setup("a", "b")
    assert sched.pick(make_request(), commit=False).reason == "tie"


def test_scheduler_needs_the_registry_index():
    from services.router.kvindex import KvIndex

    reg = Registry()
    with pytest.raises(ValueError, match="index"):
        Scheduler(reg, KvIndex(), SessionTable())
