"""Factories for tests and benchmarks of the router core: engines, load reports, requests and
vLLM-like KV events. Every argument has a default; pass only what the test is about.

    reg = Registry()
    a = make_engine(reg, "a", running=3)
    req = make_request(tokens=list(range(64)), session_id="s1")
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence

from services.router.registry import EngineState, Registry
from services.router.scheduling.interfaces import RoutingRequest
from switchyard.v1 import engine_pb2

POOL = "pool-a"
MODEL = "model-a"
# Every engine made here gets an address of its own (one address is one engine).
_ADDRESSES = itertools.count()


def make_info(
    engine_id: str = "e1",
    *,
    pool: str = POOL,
    model: str = MODEL,
    model_version: str = "v1",
    accelerator: str = "cpu",
    max_model_len: int = 8192,
    kv_block_size: int = 16,
    kv_num_blocks: int = 4096,
    kv_events: bool = False,
    max_tokens_limit: int = 0,
) -> engine_pb2.EngineInfo:
    return engine_pb2.EngineInfo(
        max_tokens_limit=max_tokens_limit,
        engine_id=engine_id,
        pool=pool,
        model=model,
        model_version=model_version,
        accelerator=accelerator,
        max_model_len=max_model_len,
        kv_block_size=kv_block_size,
        kv_num_blocks=kv_num_blocks,
        kv_events=kv_events,
    )


def make_load(
    engine_id: str = "e1",
    *,
    running: int = 0,
    waiting: int = 0,
    in_flight: int | None = None,
    kv_usage: float = 0.0,
    serving: bool = True,
    draining: bool = False,
    queries: int = 0,
    hits: int = 0,
) -> engine_pb2.LoadReport:
    return engine_pb2.LoadReport(
        engine_id=engine_id,
        running=running,
        waiting=waiting,
        in_flight=running + waiting if in_flight is None else in_flight,
        kv_cache_usage=kv_usage,
        serving=serving and not draining,
        draining=draining,
        prefix_cache_queries=queries,
        prefix_cache_hits=hits,
    )


def make_engine(
    registry: Registry | None = None,
    engine_id: str = "e1",
    *,
    pool: str = POOL,
    model: str = MODEL,
    address: str = "",
    max_model_len: int = 8192,
    kv_block_size: int = 16,
    kv_num_blocks: int = 4096,
    kv_events: bool = False,
    running: int = 0,
    waiting: int = 0,
    kv_usage: float = 0.0,
    serving: bool = True,
    draining: bool = False,
    report: bool = True,
) -> EngineState:
    """An engine registered in `registry` (a fresh one when None) with one load report sent
    (unless report=False)."""
    reg = registry if registry is not None else Registry()
    info = make_info(
        engine_id,
        pool=pool,
        model=model,
        max_model_len=max_model_len,
        kv_block_size=kv_block_size,
        kv_num_blocks=kv_num_blocks,
        kv_events=kv_events,
    )
    n = next(_ADDRESSES)
    state = reg.register(
        info, address or f"10.{n // 62500 % 250}.{n // 250 % 250}.{n % 250 + 1}:8000"
    )
    if report:
        reg.on_load(
            engine_id,
            make_load(
                engine_id,
                running=running,
                waiting=waiting,
                kv_usage=kv_usage,
                serving=serving,
                draining=draining,
            ),
        )
    return state


def make_request(
    request_id: str = "r1",
    *,
    tokens: Sequence[int] | None = None,
    prompt_tokens: int = 64,
    pool: str = POOL,
    model: str = MODEL,
    session_id: str = "",
    tenant: str = "tenant-a",
    max_tokens: int = 16,
    priority: int = 0,
    seed: int = 0,
) -> RoutingRequest:
    """A request; without `tokens`, `prompt_tokens` ids derived from `seed` (distinct seeds
    give prompts that share no block)."""
    if tokens is None:
        tokens = [(seed * 1_000_003 + i) % 50_000 + 1 for i in range(prompt_tokens)]
    return RoutingRequest(
        request_id=request_id,
        tenant=tenant,
        session_id=session_id,
        model=model,
        pool=pool,
        prompt_token_ids=list(tokens),
        max_tokens=max_tokens,
        priority=priority,
    )


class FakeVllm:
    """Names blocks the way a vLLM process does for its KV events: a chained hash salted with a
    per-process seed (so two engines name the same block differently), as opaque bytes."""

    def __init__(self, seed: str = "engine") -> None:
        self.seed = seed.encode()

    def hashes(self, token_ids: Sequence[int], block_size: int) -> list[bytes]:
        out: list[bytes] = []
        parent = self.seed
        for i in range(len(token_ids) // block_size):
            chunk = token_ids[i * block_size : (i + 1) * block_size]
            h = hashlib.blake2b(parent + repr(list(chunk)).encode(), digest_size=16).digest()
            out.append(h)
            parent = h
        return out

    def stored(
        self, token_ids: Sequence[int], block_size: int = 16, *, first_block: int = 0
    ) -> engine_pb2.KvCacheEvent:
        """BlockStored for the prompt's full blocks from `first_block` on (the ones before are
        already cached, as vLLM reports only newly stored blocks)."""
        hs = self.hashes(token_ids, block_size)
        new = hs[first_block:]
        return stored_event(
            new,
            token_ids[first_block * block_size : len(hs) * block_size],
            block_size,
            parent=hs[first_block - 1] if first_block > 0 else b"",
        )


def stored_event(
    block_hashes: Sequence[bytes],
    token_ids: Sequence[int],
    block_size: int = 16,
    *,
    parent: bytes = b"",
) -> engine_pb2.KvCacheEvent:
    return engine_pb2.KvCacheEvent(
        stored=engine_pb2.BlockStored(
            block_hashes=list(block_hashes),
            parent_block_hash=parent,
            token_ids=list(token_ids),
            block_size=block_size,
        )
    )


def removed_event(block_hashes: Sequence[bytes]) -> engine_pb2.KvCacheEvent:
    return engine_pb2.KvCacheEvent(removed=engine_pb2.BlockRemoved(block_hashes=list(block_hashes)))


def cleared_event() -> engine_pb2.KvCacheEvent:
    return engine_pb2.KvCacheEvent(cleared=engine_pb2.AllBlocksCleared())


def batch(sequence: int, *events: engine_pb2.KvCacheEvent) -> engine_pb2.KvCacheEvents:
    return engine_pb2.KvCacheEvents(sequence=sequence, events=list(events))
