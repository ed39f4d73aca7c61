"""The exact-match response cache: a deterministic turn asked again is answered by the mesh.

    response_cache: {enabled: true, ttl_seconds: 600, max_bytes: 67108864, max_entry_bytes: 1048576}
    tenants: {policies: {acme: {response_cache: false}}}   # a tenant opting out (or its own TTL)

A turn is cacheable when it is deterministic (temperature 0, or a fixed seed), not a
continuation, and its tenant has not opted out. Its key is tenant-scoped: the tenant, the served
model, the prompt's token ids as the router routes them (chat template applied, after the
prompt policy's redaction), and everything else that
shapes the output (sampling with the max_tokens the engine
gets, structured output, truncation). The model version is checked at lookup: a stored answer
counts only while an engine serving its version is routable (for a versioned model: the turn's
arm), so a new model version never gets an old one's answers.

The data path stays Envoy's. On a hit the router answers nothing itself: it routes the turn to
the cache upstream (its own `Inference.Generate`, `CacheReplay`), which replays the stored
deltas and a Final marked `cached` (usage counts no engine tokens); the safety filter and
tracing apply to it as to any turn, and an OpenAI HTTP client gets SSE or JSON as usual. On a
miss the router marks the turn for storing (`x-switchyard-cache-store`); the router never sees a
response, so the safety filter — on the response path — sends the turn as the client received
it (scrubbed) to `ResponseCache.Store` (one stream per safety process, each answer acknowledged
in order) once it has ended complete (stop or length) and unblocked. Incomplete, failed, cut or
blocked turns are never stored.

The first answer stored for a key stays until it expires (repeated turns get the same answer;
a stale one, of a version no longer served, is dropped at lookup). The store is the router's
memory (LRU, bounded in bytes, each entry under `max_entry_bytes`, expiring after its TTL), or
Redis when the quota ledger uses Redis (router replicas share it; there `maxmemory` with an LRU
policy bounds it). A store that fails is a miss, never an error.
`switchyard admin cache purge [--tenant T]` drops answers.
"""

from __future__ import annotations

import array
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
import pydantic
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Gauge

from services.common import headers as h
from services.common.config import StrictModel
from services.common.errors import Unavailable
from services.common.tracing import extract, trace_id_hex
from services.router.scheduling.interfaces import RoutingRequest
from services.router.tenancy.policy import TenantPolicy
from switchyard.v1 import inference_pb2, router_pb2, router_pb2_grpc

log = logging.getLogger(__name__)

REPLAY_SPAN = "switchyard.cache.replay"
REDIS_PREFIX = "sy:rc:"
HANDOFF_SECONDS = 30.0  # a hit's entry waits this long for its replay (then the store is asked)

LOOKUPS = Counter(
    "switchyard_router_response_cache_lookups_total",
    "Cacheable turns looked up: hit, miss, or stale (stored by a model version no longer served).",
    ["result"],
)
STORES = Counter(
    "switchyard_router_response_cache_stores_total",
    "Answers offered to the store: stored, too_large, invalid, or failed (the store failed).",
    ["result"],
)
MEMORY_BYTES = Gauge(
    "switchyard_router_response_cache_bytes", "Bytes of answers in the router's memory store."
)
MEMORY_ENTRIES = Gauge(
    "switchyard_router_response_cache_entries", "Answers in the router's memory store."
)


class ResponseCacheSection(StrictModel):
    enabled: bool = True
    ttl_seconds: float = pydantic.Field(600.0, gt=0)  # unless the tenant's policy says
    max_bytes: int = pydantic.Field(64 * 1024 * 1024, ge=0)  # the memory store's bound
    max_entry_bytes: int = pydantic.Field(1024 * 1024, ge=1024)  # a larger answer is not kept


def deterministic(req: inference_pb2.GenerateRequest) -> bool:
    """Greedy (temperature 0) or seeded: the same request gives the same answer."""
    s = req.sampling
    return (s.HasField("temperature") and s.temperature == 0) or s.HasField("seed")


def tenant_tag(tenant: str) -> str:
    """The tenant's part of a key (a fixed-length hash: any tenant name, and purge by prefix)."""
    return hashlib.sha256(tenant.encode()).hexdigest()[:16]


def cache_key(tenant: str, rr: RoutingRequest, req: inference_pb2.GenerateRequest) -> str:
    """The tenant-scoped key of a turn's answer (see the module docstring)."""
    shape = inference_pb2.GenerateRequest()
    shape.sampling.CopyFrom(req.sampling)
    shape.sampling.max_tokens = rr.max_tokens  # what the engine gets
    shape.structured_output.CopyFrom(req.structured_output)
    shape.truncate_prompt = req.truncate_prompt
    digest = hashlib.sha256()
    digest.update(rr.model.encode() + b"\0")
    digest.update(array.array("I", rr.prompt_token_ids).tobytes())
    digest.update(b"\0" + shape.SerializeToString(deterministic=True))
    return f"{tenant_tag(tenant)}:{digest.hexdigest()[:40]}"


class Store(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` unless the key holds an answer already (the first one stays)."""

    async def delete(self, key: str) -> None: ...

    async def purge(self, tag: str | None) -> int: ...


class MemoryStore:
    """LRU in the router's memory, bounded in bytes; entries expire after their TTL."""

    name = "memory"

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.bytes = 0

    async def get(self, key: str) -> bytes | None:
        got = self._entries.get(key)
        if got is None:
            return None
        expires, value = got
        if expires <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        if await self.get(key) is not None or len(value) > self.max_bytes:
            return
        self._entries[key] = (self._clock() + ttl, value)
        self.bytes += len(value)
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))  # the least recently used
        self._gauges()

    async def delete(self, key: str) -> None:
        if key in self._entries:
            self._drop(key)
            self._gauges()

    async def purge(self, tag: str | None) -> int:
        keys = [k for k in self._entries if tag is None or k.startswith(tag + ":")]
        for k in keys:
            self._drop(k)
        self._gauges()
        return len(keys)

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.bytes -= len(value)

    def _gauges(self) -> None:
        MEMORY_BYTES.set(self.bytes)
        MEMORY_ENTRIES.set(len(self._entries))


class RedisStore:
    """Redis shared by the router replicas (the quota ledger's); its maxmemory bounds it."""

    name = "redis"

    def __init__(self, url: str, timeout: float = 1.0, prefix: str = REDIS_PREFIX) -> None:
        import redis.asyncio as aioredis

        self._prefix = prefix
        self._redis: Any = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )

    async def get(self, key: str) -> bytes | None:
        value = await self._redis.get(self._prefix + key)
        return bytes(value) if value is not None else None

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        await self._redis.set(self._prefix + key, value, px=max(1, int(ttl * 1000)), nx=True)

    async def delete(self, key: str) -> None:
        await self._redis.unlink(self._prefix + key)

    async def purge(self, tag: str | None) -> int:
        pattern = self._prefix + (f"{tag}:*" if tag is not None else "*")
        n = 0
        batch: list[bytes] = []
        async for key in self._redis.scan_iter(match=pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                n += await self._redis.unlink(*batch)
                batch = []
        if batch:
            n += await self._redis.unlink(*batch)
        return n


class ResponseCache:
    """Lookups and keys for the router's ext_proc, and the store the safety filter feeds."""

    def __init__(self, section: ResponseCacheSection, store: Store) -> None:
        self.section = section
        self.store = store
        # A hit's entry, kept from the lookup until its replay takes it (no second read).
        self._handoff: dict[str, tuple[float, router_pb2.CachedTurn]] = {}

    def entry_for(
        self,
        tenant: str,
        policy: TenantPolicy,
        rr: RoutingRequest,
        req: inference_pb2.GenerateRequest,
    ) -> tuple[str, float] | None:
        """(key, TTL) of a cacheable turn; None when it is not cacheable."""
        if not self.section.enabled or not policy.response_cache or rr.resumed:
            return None
        if not deterministic(req):
            return None
        ttl = policy.response_cache_ttl_seconds or self.section.ttl_seconds
        return cache_key(tenant, rr, req), ttl

    async def lookup(self, key: str, usable: Callable[[str], bool]) -> router_pb2.CachedTurn | None:
        """The stored answer, if its model version is still served (`usable(version)`)."""
        try:
            raw = await self.store.get(key)
        except Exception as e:  # a cache that fails is a miss
            log.warning("response cache lookup failed (%s): %r", self.store.name, e)
            raw = None
        if raw is None:
            LOOKUPS.labels("miss").inc()
            return None
        turn = router_pb2.CachedTurn.FromString(raw)
        if not usable(turn.final.served_by.model_version):
            LOOKUPS.labels("stale").inc()
            try:  # (so that the version now served can store its own answer)
                await self.store.delete(key)
            except Exception as e:
                log.warning("response cache delete failed (%s): %r", self.store.name, e)
            return None
        LOOKUPS.labels("hit").inc()
        now = time.monotonic()
        for k in [k for k, (t, _) in self._handoff.items() if t < now]:
            del self._handoff[k]
        self._handoff[key] = (now + HANDOFF_SECONDS, turn)
        return turn

    async def take(self, key: str) -> router_pb2.CachedTurn | None:
        """A hit's answer for its replay."""
        held = self._handoff.pop(key, None)
        if held is not None:
            return held[1]
        try:
            raw = await self.store.get(key)
        except Exception:
            return None
        return router_pb2.CachedTurn.FromString(raw) if raw is not None else None

    async def put(self, entry: str, turn: router_pb2.CachedTurn) -> bool:
        """Store what the safety filter sends for a turn marked `entry` ("key;ttl")."""
        key, _, ttl_text = entry.partition(";")
        try:
            ttl = float(ttl_text)
        except ValueError:
            ttl = 0.0
        final = turn.final
        done = (inference_pb2.FINISH_REASON_STOP, inference_pb2.FINISH_REASON_LENGTH)
        if ":" not in key or ttl <= 0 or final.finish_reason not in done:
            STORES.labels("invalid").inc()
            return False
        value = turn.SerializeToString()
        if len(value) > self.section.max_entry_bytes:
            STORES.labels("too_large").inc()
            return False
        try:
            await self.store.put(key, value, ttl)
        except Exception as e:
            log.warning("response cache store failed (%s): %r", self.store.name, e)
            STORES.labels("failed").inc()
            return False
        STORES.labels("stored").inc()
        return True

    async def purge(self, tenant: str) -> int:
        return await self.store.purge(tenant_tag(tenant) if tenant else None)


def make_store(section: ResponseCacheSection, redis_url: str, timeout: float) -> Store:
    if redis_url:
        return RedisStore(redis_url, timeout)
    return MemoryStore(section.max_bytes)


class CachePutService(router_pb2_grpc.ResponseCacheServicer):
    """`ResponseCache.Store`: the safety filter's completed turns, on one stream per safety
    process, each answered in order (safety identity only)."""

    def __init__(self, cache: ResponseCache) -> None:
        self._cache = cache

    def add_to_server(self, server: grpc.aio.Server) -> None:
        router_pb2_grpc.add_ResponseCacheServicer_to_server(self, server)

    async def Store(
        self,
        request_iterator: AsyncIterator[router_pb2.CachePutRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[router_pb2.CachePutResponse]:
        async for request in request_iterator:
            stored = await self._cache.put(request.entry, request.turn)
            yield router_pb2.CachePutResponse(stored=stored)


class CacheReplay:
    """The cache upstream: `Inference.Generate` answering a hit (Envoy routes it here by the
    router's `x-switchyard-cache: hit`) with the stored deltas and a Final marked cached."""

    SERVICE_NAME = "switchyard.v1.Inference"

    def __init__(self, cache: ResponseCache, tracer: trace.Tracer | None = None) -> None:
        self._cache = cache
        self._tracer = tracer or trace.NoOpTracer()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        handler = grpc.unary_stream_rpc_method_handler(
            self.Generate,
            request_deserializer=inference_pb2.GenerateRequest.FromString,
            response_serializer=inference_pb2.GenerateResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(self.SERVICE_NAME, {"Generate": handler}),)
        )

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        metadata = context.invocation_metadata() or ()
        key = next((v for k, v in metadata if k == h.CACHE_KEY), "")
        span = self._tracer.start_span(REPLAY_SPAN, context=extract(metadata), kind=SpanKind.SERVER)
        try:
            trace_id = trace_id_hex(span)
            if trace_id:
                context.set_trailing_metadata(((h.TRACE_ID, trace_id),))
            turn = await self._cache.take(key) if key else None
            if turn is None:
                raise Unavailable("the cached answer expired before it was replayed; ask again")
            final = inference_pb2.Final()
            final.CopyFrom(turn.final)
            final.cached = True
            final.request_id = request.request_id
            for name in ("usage", "timing", "safety"):
                final.ClearField(name)  # no engine ran; the safety filter reports anew
            served = final.served_by.SerializeToString()
            await context.send_initial_metadata(((h.SERVED_BY, served),))
            if span.is_recording():
                span.set_attributes(
                    {
                        "switchyard.cache.deltas": len(turn.deltas),
                        "gen_ai.response.model": final.served_by.model,
                        "switchyard.model_version": final.served_by.model_version,
                    }
                )
            for delta in turn.deltas:
                yield inference_pb2.GenerateResponse(delta=delta)
            yield inference_pb2.GenerateResponse(final=final)
        finally:
            span.end()
