"""Scorer and picker plugins (services/router/scheduling/plugins/): table tests."""

from typing import Any

import pytest

from services.router.kvindex import block_hashes
from services.router.registry import Registry
from services.router.scheduling.interfaces import (
    KV_UTILIZATION_SCORER,
    MAX_SCORE_PICKER,
    PREFIX_AFFINITY_SCORER,
    QUEUE_DEPTH_SCORER,
    SESSION_AFFINITY_SCORER,
    PluginContext,
)
from services.router.scheduling.registry import builtin_plugins
from services.router.sessions import SessionTable
from services.router.testing import FakeVllm, batch, make_engine, make_load, make_request


def build(
    type_name: str, reg: Registry, sessions: SessionTable | None = None, **params: Any
) -> Any:
    spec = builtin_plugins().get(type_name)
    assert spec is not None
    ctx = PluginContext(reg, reg.index, sessions or SessionTable())
    return spec.factory(type_name, spec.params.model_validate(params), ctx)


def tokens(n: int, seed: int = 0) -> list[int]:
    return [(seed * 104_729 + i) % 40_000 + 1 for i in range(n)]


# -- prefix affinity -------------------------------------------------------------------------


def test_prefix_affinity_is_the_fraction_of_leading_blocks_held():
    reg = Registry()
    a, b, c = (make_engine(reg, n, kv_events=True) for n in "abc")
    p = tokens(8 * 16 + 5)  # 8 full blocks and a partial one
    reg.on_kv_events("a", batch(1, FakeVllm("a").stored(p)))
    reg.on_kv_events("b", batch(1, FakeVllm("b").stored(p[: 2 * 16])))
    scores = build(PREFIX_AFFINITY_SCORER, reg).score(make_request(tokens=p), [a, b, c])
    assert scores == {"a": 1.0, "b": 0.25}


def test_prefix_affinity_hashes_once_per_block_size():
    reg = Registry()
    small = make_engine(reg, "small", kv_block_size=16)
    big = make_engine(reg, "big", kv_block_size=32)
    p = tokens(64)
    reg.index.record_routed("small", block_hashes(p[:32], 16))
    reg.index.record_routed("big", block_hashes(p, 32))
    req = make_request(tokens=p)
    assert build(PREFIX_AFFINITY_SCORER, reg).score(req, [small, big]) == {"small": 0.5, "big": 1.0}


def test_prefix_affinity_short_prompt_scores_nothing():
    reg = Registry()
    a = make_engine(reg, "a")
    assert build(PREFIX_AFFINITY_SCORER, reg).score(make_request(tokens=[1, 2, 3]), [a]) == {}


# -- session affinity ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session", "load", "params", "expected"),
    [
        ("s1", {}, {}, {"a": 1.0}),
        ("", {}, {}, {}),  # no session id
        ("s2", {}, {}, {}),  # unknown session
        ("s1", {"running": 20, "waiting": 12}, {}, {"a": 1.0}),  # depth 32: not above
        ("s1", {"running": 20, "waiting": 13}, {}, {}),  # depth 33 > 32: let go
        ("s1", {"running": 3}, {"max_queue_depth": 2}, {}),
        ("s1", {"kv_usage": 0.91}, {}, {}),  # KV above 0.9: let go
        ("s1", {"kv_usage": 0.91}, {"max_kv_usage": 0.95}, {"a": 1.0}),
    ],
)
def test_session_affinity(session, load, params, expected):
    reg = Registry()
    sessions = SessionTable()
    sessions.set("s1", "a")
    a, b = make_engine(reg, "a"), make_engine(reg, "b")
    reg.on_load("a", make_load("a", **load))
    scorer = build(SESSION_AFFINITY_SCORER, reg, sessions, **params)
    assert scorer.score(make_request(session_id=session), [a, b]) == expected


def test_session_affinity_counts_pending_turns_as_load():
    reg = Registry()
    sessions = SessionTable()
    sessions.set("s1", "a")
    a = make_engine(reg, "a", running=2)
    scorer = build(SESSION_AFFINITY_SCORER, reg, sessions, max_queue_depth=3)
    reg.note_routed("a")
    assert scorer.score(make_request(session_id="s1"), [a]) == {"a": 1.0}
    reg.note_routed("a")
    assert scorer.score(make_request(session_id="s1"), [a]) == {}


def test_session_engine_not_among_candidates_scores_nothing():
    reg = Registry()
    sessions = SessionTable()
    sessions.set("s1", "gone")
    b = make_engine(reg, "b")
    assert (
        build(SESSION_AFFINITY_SCORER, reg, sessions).score(make_request(session_id="s1"), [b])
        == {}
    )


# -- queue depth, KV utilization -------------------------------------------------------------


@pytest.mark.parametrize(
    ("depths", "pending", "half", "expected"),
    [
        ([0, 0, 0], [0, 0, 0], 8, [1.0, 1.0, 1.0]),
        ([0, 8, 24], [0, 0, 0], 8, [1.0, 0.5, 0.25]),
        ([10, 18], [0, 0], 8, [1.0, 0.5]),  # relative to the least loaded candidate
        ([0, 0], [2, 0], 2, [0.5, 1.0]),  # turns routed since the last report count
        ([4, 0], [0, 0], 1, [0.2, 1.0]),
    ],
)
def test_queue_depth(depths, pending, half, expected):
    reg = Registry()
    engines = [make_engine(reg, f"e{i}", waiting=d) for i, d in enumerate(depths)]
    for e, p in zip(engines, pending, strict=True):
        for _ in range(p):
            reg.note_routed(e.engine_id)
    got = build(QUEUE_DEPTH_SCORER, reg, half_score_depth=half).score(make_request(), engines)
    assert [got[e.engine_id] for e in engines] == pytest.approx(expected)


@pytest.mark.parametrize(("usage", "expected"), [(0.0, 1.0), (0.25, 0.75), (1.0, 0.0)])
def test_kv_utilization_scorer(usage, expected):
    reg = Registry()
    e = make_engine(reg, "e", kv_usage=usage)
    assert build(KV_UTILIZATION_SCORER, reg).score(make_request(), [e]) == {"e": expected}


# -- max-score picker ------------------------------------------------------------------------


def test_picker_ranks_by_score_and_limits():
    reg = Registry()
    es = [make_engine(reg, f"e{i}") for i in range(5)]
    picker = build(MAX_SCORE_PICKER, reg, seed=1)
    scored = list(zip(es, [0.5, 2.0, 1.0, 3.0, 0.1], strict=True))
    assert picker.pick(make_request(), scored, 3) == [es[3], es[1], es[2]]
    assert picker.pick(make_request(), scored[:1], 3) == [es[0]]


def test_picker_breaks_ties_by_fewest_pending_then_at_random():
    reg = Registry()
    es = [make_engine(reg, f"e{i}") for i in range(4)]
    for _ in range(2):
        reg.note_routed("e0")
    reg.note_routed("e1")
    picker = build(MAX_SCORE_PICKER, reg, seed=3)
    scored = [(e, 1.0 + 1e-12 * i) for i, e in enumerate(es)]  # equal within tolerance
    firsts = set()
    for _ in range(50):
        ranked = picker.pick(make_request(), scored, 4)
        assert ranked[2:] == [es[1], es[0]]  # most pending last
        firsts.add(ranked[0].engine_id)
    assert firsts == {"e2", "e3"}  # random among the least pending
