"""The response cache (services/router/response_cache.py): which turns are cacheable, their
tenant-scoped keys, the memory store's bounds, what may be stored, and the replay."""

from __future__ import annotations

from services.router.response_cache import (
    CacheReplay,
    MemoryStore,
    ResponseCache,
    ResponseCacheSection,
    cache_key,
    deterministic,
    tenant_tag,
)
from services.router.tenancy.policy import TenantPolicy
from services.router.testing import make_request as make_rr
from switchyard.v1 import inference_pb2 as pb
from switchyard.v1 import router_pb2

STOP = pb.FINISH_REASON_STOP


def req(temperature=None, seed=None, **sampling):
    r = pb.GenerateRequest(prompt="Hi")
    if temperature is not None:
        r.sampling.temperature = temperature
    if seed is not None:
        r.sampling.seed = seed
    for k, v in sampling.items():
        setattr(r.sampling, k, v)
    return r


def test_only_greedy_or_seeded_turns_are_deterministic():
    assert deterministic(req(temperature=0))
    assert deterministic(req(temperature=0.8, seed=7))
    assert not deterministic(req())  # the engine's default temperature samples
    assert not deterministic(req(temperature=0.7))


def test_keys_are_tenant_scoped_and_cover_what_shapes_the_answer():
    rr = make_rr(tokens=[1, 2, 3, 4])
    base = cache_key("acme", rr, req(temperature=0))
    assert base.startswith(tenant_tag("acme") + ":")
    assert cache_key("acme", rr, req(temperature=0)) == base
    assert cache_key("globex", rr, req(temperature=0)) != base
    assert cache_key("acme", make_rr(tokens=[1, 2, 3, 5]), req(temperature=0)) != base
    assert cache_key("acme", rr, req(temperature=0, top_p=0.5)) != base
    other_model = make_rr(tokens=[1, 2, 3, 4], model="other")
    assert cache_key("acme", other_model, req(temperature=0)) != base
    regex = req(temperature=0)
    regex.structured_output.regex = "[0-9]+"
    assert cache_key("acme", rr, regex) != base
    # Who asks, in which session, at which priority does not change the answer.
    same = req(temperature=0)
    same.session_id, same.request_id, same.priority = "s9", "r9", 5
    assert cache_key("acme", rr, same) == base


def cache(**section):
    return ResponseCache(
        ResponseCacheSection.model_validate(section), MemoryStore(section.get("max_bytes", 10**6))
    )


def test_a_tenant_may_opt_out_or_keep_answers_its_own_time():
    c = cache(ttl_seconds=60)
    rr = make_rr(tokens=[1, 2])
    assert c.entry_for("acme", TenantPolicy(), rr, req(temperature=0))[1] == 60
    own = TenantPolicy(response_cache_ttl_seconds=5)
    assert c.entry_for("acme", own, rr, req(temperature=0))[1] == 5
    assert c.entry_for("acme", TenantPolicy(response_cache=False), rr, req(temperature=0)) is None
    assert c.entry_for("acme", TenantPolicy(), rr, req(temperature=1)) is None
    resumed = make_rr(tokens=[1, 2])
    resumed.resumed = True  # a continuation never hits
    assert c.entry_for("acme", TenantPolicy(), resumed, req(temperature=0)) is None
    assert cache(enabled=False).entry_for("acme", TenantPolicy(), rr, req(temperature=0)) is None


def stored(text="4", reason=STOP, version="v1"):
    final = pb.Final(finish_reason=reason)
    final.served_by.model_version = version
    final.usage.completion_tokens = 1
    return router_pb2.CachedTurn(deltas=[pb.Delta(text=text, token_count=1)], final=final)


async def test_only_complete_answers_are_stored_and_a_stale_version_misses():
    c = cache()
    key = f"{tenant_tag('acme')}:k1"
    assert not await c.put(f"{key};60", stored(reason=pb.FINISH_REASON_ABORTED))
    assert not await c.put(f"{key};60", stored(reason=pb.FINISH_REASON_BLOCKED))
    assert not await c.put(f"{key};x", stored())
    assert await c.lookup(key, lambda v: True) is None
    assert await c.put(f"{key};60", stored())
    await c.put(f"{key};60", stored(text="5"))  # the first answer stored stays
    got = await c.lookup(key, lambda v: v == "v1")
    assert got is not None and got.deltas[0].text == "4"
    assert await c.lookup(key, lambda v: v == "v2") is None  # stored by a version not served
    await c.put(f"{key};60", stored(text="6", version="v2"))  # (the stale one was dropped)
    got = await c.lookup(key, lambda v: v == "v2")
    assert got is not None and got.deltas[0].text == "6"
    assert await c.purge("globex") == 0
    assert await c.purge("acme") == 1
    assert await c.lookup(key, lambda v: True) is None


async def test_an_answer_over_the_entry_limit_is_not_kept():
    c = cache(max_entry_bytes=1024)
    assert not await c.put(f"{tenant_tag('a')}:k;60", stored(text="x" * 2000))


async def test_the_memory_store_is_bounded_in_bytes_and_time():
    now = [0.0]
    s = MemoryStore(max_bytes=100, clock=lambda: now[0])
    await s.put("t:a", b"a" * 40, ttl=10)
    await s.put("t:b", b"b" * 40, ttl=10)
    assert await s.get("t:a") == b"a" * 40  # a is now the most recently used
    await s.put("t:c", b"c" * 40, ttl=10)  # over 100 bytes: the least recently used (b) goes
    assert await s.get("t:b") is None and s.bytes == 80
    now[0] = 11
    assert await s.get("t:a") is None and await s.get("t:c") is None and s.bytes == 0
    await s.put("t:big", b"x" * 101, ttl=10)  # larger than the whole store: not kept
    assert await s.get("t:big") is None


class _Context:
    def __init__(self, key):
        self._md = (("x-switchyard-cache-key", key),)
        self.initial = None

    def invocation_metadata(self):
        return self._md

    def set_trailing_metadata(self, md):
        pass

    async def send_initial_metadata(self, md):
        self.initial = md


async def test_a_hit_replays_its_deltas_and_a_final_marked_cached():
    c = cache()
    key = f"{tenant_tag('acme')}:k2"
    turn = stored(text="hello")
    turn.final.timing.ttft.FromMilliseconds(30)
    await c.put(f"{key};60", turn)
    assert await c.lookup(key, lambda v: True) is not None
    ctx = _Context(key)
    out = [m async for m in CacheReplay(c).Generate(pb.GenerateRequest(request_id="r1"), ctx)]
    assert [m.delta.text for m in out[:-1]] == ["hello"]
    final = out[-1].final
    assert final.cached and final.request_id == "r1"
    assert final.usage.completion_tokens == 0 and not final.HasField("timing")
    assert ctx.initial[0][0] == "x-switchyard-served-by-bin"
