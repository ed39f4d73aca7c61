"""The prefix index (services/router/kvindex.py): own hashes, precise view, approximate fallback."""

import pytest

from services.router.kvindex import KvIndex, KvIndexConfig, block_hashes
from services.router.testing import FakeVllm, batch, cleared_event, removed_event, stored_event

BS = 16


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def prompt(n_blocks: int, seed: int = 0, extra: int = 0) -> list[int]:
    return [(seed * 7919 + i) % 30_000 + 1 for i in range(n_blocks * BS + extra)]


def precise_index(*engines: str, **cfg: object) -> KvIndex:
    idx = KvIndex(KvIndexConfig(**cfg))  # type: ignore[arg-type]
    for e in engines:
        idx.add_engine(e, kv_events=True, kv_num_blocks=1000)
    return idx


# -- own hashes -----------------------------------------------------------------------------


def test_block_hashes_cover_full_blocks_only_and_chain():
    p = prompt(4, extra=5)
    hs = block_hashes(p, BS)
    assert len(hs) == 4
    assert block_hashes(p[: 2 * BS], BS) == hs[:2]  # a prefix hashes to the leading hashes
    assert block_hashes(p, BS) == hs  # deterministic
    other = list(p)
    other[0] += 1  # a change in block 0 changes every later hash (chained)
    assert not set(block_hashes(other, BS)) & set(hs)
    assert block_hashes(p[: BS - 1], BS) == []
    assert not set(block_hashes(p, 32)) & set(hs)  # another block size, other names


# -- precise --------------------------------------------------------------------------------


def test_stored_blocks_match_by_longest_prefix():
    idx = precise_index("a", "b")
    p = prompt(6)
    idx.apply("a", batch(1, FakeVllm("a").stored(p, BS)))
    idx.apply("b", batch(1, FakeVllm("b").stored(p[: 2 * BS], BS)))
    assert idx.match(block_hashes(p, BS), ["a", "b", "c"]) == {"a": 6, "b": 2}
    assert idx.indexed_blocks("a") == 6 and idx.is_precise("a")


def test_child_event_chains_onto_parent_by_vllm_hash():
    idx = precise_index("a")
    vllm = FakeVllm("a")
    p = prompt(6)
    idx.apply("a", batch(1, vllm.stored(p[: 3 * BS], BS)))
    # vLLM reports only the newly stored blocks, naming the parent by its own (vLLM) hash.
    idx.apply("a", batch(2, vllm.stored(p, BS, first_block=3)))
    assert idx.match(block_hashes(p, BS), ["a"]) == {"a": 6}


def test_match_stops_at_first_missing_block():
    idx = precise_index("a")
    vllm = FakeVllm("a")
    p = prompt(6)
    idx.apply("a", batch(1, vllm.stored(p, BS)))
    idx.apply("a", batch(2, removed_event([vllm.hashes(p, BS)[2]])))
    assert idx.match(block_hashes(p, BS), ["a"]) == {"a": 2}
    assert idx.indexed_blocks("a") == 5


def test_all_blocks_cleared_empties_the_view():
    idx = precise_index("a")
    p = prompt(4)
    idx.apply("a", batch(1, FakeVllm("a").stored(p, BS)))
    idx.apply("a", batch(2, cleared_event()))
    assert idx.match(block_hashes(p, BS), ["a"]) == {}
    assert idx.indexed_blocks("a") == 0


def test_unknown_parent_blocks_are_skipped_and_counted():
    idx = precise_index("a")
    p = prompt(4)
    hs = FakeVllm("a").hashes(p, BS)
    idx.apply("a", batch(1, stored_event(hs[2:], p[2 * BS :], BS, parent=hs[1])))
    assert idx.stats.orphaned_blocks == 2
    assert idx.indexed_blocks("a") == 0


def test_malformed_stored_event_is_counted():
    idx = precise_index("a")
    p = prompt(3)
    hs = FakeVllm("a").hashes(p, BS)
    idx.apply("a", batch(1, stored_event(hs, p[: 2 * BS + 3], BS)))  # tokens for 2 blocks
    assert idx.stats.malformed_events == 1
    assert idx.match(block_hashes(p, BS), ["a"]) == {"a": 2}


def test_sequence_gap_clears_precise_view_and_falls_back_to_approximate():
    idx = precise_index("a")
    vllm = FakeVllm("a")
    p, q = prompt(4, seed=1), prompt(4, seed=2)
    idx.apply("a", batch(1, vllm.stored(p, BS)))
    idx.apply("a", batch(3, vllm.stored(q[: 2 * BS], BS)))  # batch 2 was lost
    assert idx.stats.gaps == 1 and not idx.is_precise("a")
    assert idx.match(block_hashes(p, BS), ["a"]) == {}  # cleared: may be evicted by now
    assert idx.match(block_hashes(q, BS), ["a"]) == {"a": 2}  # stored after the gap
    idx.record_routed("a", block_hashes(p, BS))  # degraded: routed prompts count again
    assert idx.match(block_hashes(p, BS), ["a"]) == {"a": 4}
    # A child of a block seen before the gap still chains (vLLM hashes stay valid).
    idx.apply("a", batch(4, vllm.stored(q, BS, first_block=2)))
    assert idx.match(block_hashes(q, BS), ["a"]) == {"a": 4}
    # An empty cache is a complete view again.
    idx.apply("a", batch(5, cleared_event()))
    assert idx.is_precise("a") and idx.match(block_hashes(p, BS), ["a"]) == {}


def test_same_tokens_under_two_vllm_hashes_need_both_removed():
    idx = precise_index("a")
    p = prompt(2)
    salted, plain = FakeVllm("salt-1"), FakeVllm("salt-2")
    idx.apply("a", batch(1, salted.stored(p, BS)))
    idx.apply("a", batch(2, plain.stored(p, BS)))
    idx.apply("a", batch(3, removed_event(salted.hashes(p, BS))))
    assert idx.match(block_hashes(p, BS), ["a"]) == {"a": 2}
    idx.apply("a", batch(4, removed_event(plain.hashes(p, BS))))
    assert idx.match(block_hashes(p, BS), ["a"]) == {}


def test_precise_view_is_bounded_by_kv_capacity():
    idx = KvIndex(KvIndexConfig(precise_slack=1.5))
    idx.add_engine("a", kv_events=True, kv_num_blocks=4)  # at most 6 blocks
    vllm = FakeVllm("a")
    first, second = prompt(4, seed=1), prompt(4, seed=2)
    idx.apply("a", batch(1, vllm.stored(first, BS)))
    idx.apply("a", batch(2, vllm.stored(second, BS)))
    assert idx.indexed_blocks("a") == 6
    assert idx.stats.precise_evicted == 2
    assert idx.match(block_hashes(first, BS), ["a"]) == {}  # oldest blocks went first
    assert idx.match(block_hashes(second, BS), ["a"]) == {"a": 4}


def test_removed_engine_leaves_nothing_behind_for_the_next_in_its_slot():
    idx = precise_index("a")
    p = prompt(3)
    idx.apply("a", batch(1, FakeVllm("a").stored(p, BS)))
    idx.remove_engine("a")
    idx.add_engine("b", kv_events=False)
    assert idx.match(block_hashes(p, BS), ["a", "b"]) == {}
    assert idx.indexed_blocks("a") == 0


def test_events_for_unknown_engines_are_ignored():
    idx = precise_index()
    idx.apply("ghost", batch(1, FakeVllm().stored(prompt(2), BS)))
    assert idx.stats.batches == 0


def test_match_with_more_engines_than_one_machine_word():
    names = [f"e{i:03d}" for i in range(150)]
    idx = precise_index(*names)
    p = prompt(8)
    for i, name in enumerate(names):
        idx.apply(name, batch(1, FakeVllm(name).stored(p[: (i % 8 + 1) * BS], BS)))
    got = idx.match(block_hashes(p, BS), names)
    assert got == {name: i % 8 + 1 for i, name in enumerate(names)}


# -- approximate ----------------------------------------------------------------------------


def approx_index(clock: Clock, **cfg: object) -> KvIndex:
    idx = KvIndex(KvIndexConfig(**cfg), clock=clock)  # type: ignore[arg-type]
    idx.add_engine("a", kv_events=False)
    idx.add_engine("b", kv_events=False)
    return idx


def test_routed_prompts_match_for_engines_without_events():
    idx = approx_index(Clock())
    p = prompt(4)
    idx.record_routed("a", block_hashes(p, BS))
    longer = p + prompt(2, seed=9)
    assert idx.match(block_hashes(longer, BS), ["a", "b"]) == {"a": 4}
    assert idx.indexed_blocks("a") == 4


def test_a_prompt_routed_to_a_precise_engine_counts_there_until_its_events_are_due():
    """Its blocks are stored only once the engine has prefilled it: a turn sharing the prefix
    routed meanwhile must see them there, not compute the prefix on another engine."""
    clock = Clock()
    idx = KvIndex(KvIndexConfig(pending_ttl=30.0), clock=clock)
    idx.add_engine("a", kv_events=True)
    idx.add_engine("b", kv_events=True)
    p = prompt(4)
    idx.record_routed("a", block_hashes(p, BS))
    assert idx.is_precise("a") and idx.indexed_blocks("a") == 4
    assert idx.match(block_hashes(p + prompt(1, seed=5), BS), ["a", "b"]) == {"a": 4}
    clock.now += 31  # no event confirmed them: they were never stored (or are gone)
    assert idx.match(block_hashes(p, BS), ["a", "b"]) == {}


def test_a_block_the_engine_removes_stops_counting_though_it_was_routed_again():
    idx = precise_index("a")
    vllm = FakeVllm("a")
    p = prompt(4)
    idx.apply("a", batch(1, vllm.stored(p, BS)))
    idx.record_routed("a", block_hashes(p, BS))  # another turn with the same prompt
    idx.apply("a", batch(2, removed_event([vllm.hashes(p, BS)[1]])))
    assert idx.match(block_hashes(p, BS), ["a"]) == {"a": 1}


@pytest.mark.parametrize(
    ("cap", "touch_first", "first_survives"),
    [
        (8, False, False),  # the least recently routed prompt is evicted
        (8, True, True),  # ...unless routed again since
        (12, False, True),  # room for all
    ],
)
def test_approximate_entries_are_lru_bounded(cap, touch_first, first_survives):
    idx = approx_index(Clock(), approx_max_blocks=cap)
    first, second, third = prompt(4, seed=1), prompt(4, seed=2), prompt(4, seed=3)
    idx.record_routed("a", block_hashes(first, BS))
    idx.record_routed("a", block_hashes(second, BS))
    if touch_first:
        idx.record_routed("a", block_hashes(first, BS))
    idx.record_routed("a", block_hashes(third, BS))
    assert idx.indexed_blocks("a") == min(cap, 12)
    held = idx.match(block_hashes(first, BS), ["a"]).get("a", 0)
    assert (held == 4) is first_survives
    assert idx.match(block_hashes(third, BS), ["a"]) == {"a": 4}


def test_approximate_entries_expire_after_ttl():
    clock = Clock()
    idx = approx_index(clock, approx_ttl=60.0)
    old, fresh = prompt(4, seed=1), prompt(4, seed=2)
    idx.record_routed("a", block_hashes(old, BS))
    clock.now += 50
    idx.record_routed("b", block_hashes(fresh, BS))
    clock.now += 20  # old: 70 s, fresh: 20 s
    assert idx.expire() == 4
    assert idx.match(block_hashes(old, BS), ["a"]) == {}
    assert idx.match(block_hashes(fresh, BS), ["b"]) == {"b": 4}
    assert idx.stats.approx_expired == 4


def test_match_expires_stale_entries_by_itself():
    clock = Clock()
    idx = approx_index(clock, approx_ttl=8.0)
    p = prompt(2)
    idx.record_routed("a", block_hashes(p, BS))
    clock.now += 10  # > ttl + ttl/8 since the last expiry pass
    assert idx.match(block_hashes(p, BS), ["a"]) == {}


# -- cache salt (per-tenant isolation) -------------------------------------------------------


def test_blocks_stored_under_a_salt_match_only_that_salts_prompts():
    idx = precise_index("a")
    p = prompt(3)
    ev = FakeVllm("a").stored(p, BS)
    ev.stored.cache_salt = "tenant:acme"  # vLLM folds it into the first block's hash
    idx.apply("a", batch(1, ev))
    assert idx.match(block_hashes(p, BS, salt="tenant:acme"), ["a"]) == {"a": 3}
    assert idx.match(block_hashes(p, BS), ["a"]) == {}  # unsalted: other blocks
    assert idx.match(block_hashes(p, BS, salt="tenant:other"), ["a"]) == {}
    # A child run (parent set) chains onto the salted parent, whatever its own salt field.
    longer = prompt(3) + prompt(1, seed=9)
    child = FakeVllm("a").stored(longer, BS, first_block=3)
    idx.apply("a", batch(2, child))
    assert idx.match(block_hashes(longer, BS, salt="tenant:acme"), ["a"]) == {"a": 4}
