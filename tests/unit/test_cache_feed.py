"""The safety filter's feed of the response cache (services/safety/cache_feed.py) against the
router's real `ResponseCache.Store` servicer on a loopback gRPC server (plaintext): answers go
on one stream, wait for a router that is not up yet, survive its restart (only what was written
and never answered is lost, and counted), and a full queue drops (counted) rather than grows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from services.mesh.up import free_port
from services.router.response_cache import (
    CachePutService,
    MemoryStore,
    ResponseCache,
    ResponseCacheSection,
    tenant_tag,
)
from services.safety import cache_feed
from services.safety.cache_feed import CacheFeed
from switchyard.v1 import inference_pb2 as pb


class CountingStore(CachePutService):
    """The router's servicer, counting the streams opened to it."""

    def __init__(self, cache: ResponseCache) -> None:
        super().__init__(cache)
        self.streams = 0

    async def Store(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:  # type: ignore[override]
        self.streams += 1
        async for answer in super().Store(request_iterator, context):
            yield answer


async def start_router(port: int) -> tuple[grpc.aio.Server, CountingStore, MemoryStore]:
    store = MemoryStore(10**6)
    servicer = CountingStore(ResponseCache(ResponseCacheSection(), store))
    server = grpc.aio.server()
    servicer.add_to_server(server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, servicer, store


def final(reason: int = pb.FINISH_REASON_STOP) -> pb.Final:
    return pb.Final(finish_reason=reason)


def entry(i: int) -> str:
    return f"{tenant_tag('acme')}:k{i};60"


def feeds(result: str) -> float:
    got = REGISTRY.get_sample_value("switchyard_safety_cache_feeds_total", {"result": result})
    return got or 0.0


async def until(done: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.02)


async def stored(store: MemoryStore, *entries: str) -> None:
    """Wait until the store holds the answers offered as these entries."""
    keys = [e.partition(";")[0] for e in entries]
    await until(
        lambda: all(k in store._entries for k in keys),
        f"stored {list(store._entries)}, not all of {keys}",
    )


@pytest.fixture
def quick_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_feed, "RETRY_SECONDS", 0.05)


async def test_answers_go_on_one_stream_and_only_complete_ones() -> None:
    port = free_port()
    server, servicer, store = await start_router(port)
    feed = CacheFeed(f"127.0.0.1:{port}", None)
    before = feeds("stored")
    try:
        feed.offer(entry(0), [pb.Delta(text="cut")], final(pb.FINISH_REASON_ABORTED))
        assert feed._task is None  # nothing to send: no stream
        for i in range(1, 6):
            feed.offer(entry(i), [pb.Delta(text=str(i), token_count=1)], final())
            await asyncio.sleep(0)
        await stored(store, *(entry(i) for i in range(1, 6)))
        await until(lambda: feeds("stored") == before + 5, "not every answer acknowledged")
        assert servicer.streams == 1
        assert not any(k.endswith("k0") for k in store._entries)
    finally:
        await feed.close()
        await server.stop(0)


async def test_answers_wait_for_a_router_not_up_yet_and_a_restart_loses_only_the_unanswered(
    quick_retry: None,
) -> None:
    port = free_port()
    feed = CacheFeed(f"127.0.0.1:{port}", None)
    try:
        feed.offer(entry(1), [pb.Delta(text="1")], final())  # nothing listens yet
        await asyncio.sleep(0.3)
        server, _, store = await start_router(port)
        try:
            feed.offer(entry(2), [pb.Delta(text="2")], final())
            await stored(store, entry(1), entry(2))  # (after gRPC's reconnect backoff)
            # The router going away breaks the stream; the feed opens another, which waits
            # for it to be back.
            failed = feeds("failed")
            await server.stop(0)
            feed.offer(entry(3), [pb.Delta(text="3")], final())
            await asyncio.sleep(0.3)
            server, _, store = await start_router(port)
            feed.offer(entry(4), [pb.Delta(text="4")], final())
            await stored(store, entry(4))
            # Only answers written on the broken stream and never answered can be lost.
            assert feeds("failed") - failed + len(store._entries) >= 2
        finally:
            await server.stop(0)
    finally:
        await feed.close()


async def test_a_full_queue_drops_rather_than_grows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_feed, "MAX_PENDING", 2)
    feed = CacheFeed(f"127.0.0.1:{free_port()}", None)  # nothing listens
    dropped = feeds("dropped")
    try:
        for i in range(5):  # no await between them: none has left the queue yet
            feed.offer(entry(i), [pb.Delta(text=str(i))], final())
        assert feeds("dropped") == dropped + 3
        assert feed._queue.qsize() == 2
    finally:
        await feed.close()
