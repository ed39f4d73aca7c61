"""Feeds the router's response cache from the response path (services/router/response_cache.py).

The router marks a cacheable turn it could not answer from the cache with
`x-switchyard-cache-store`; the safety filter records that turn as the client receives it
(scrubbed) and, once it has ended complete (a Final with stop or length) and unblocked, queues
it for the router's `ResponseCache.Store`. One background task keeps one stream open to the
router and writes the queued answers on it (a call per answer cost both sides a new HTTP/2
stream on every greedy turn); the router answers each in order. A store that is slow or down
loses answers only (counted: `dropped` when the queue is full, `failed` when the stream breaks
before their answer): the turn itself is never held for it. The stream waits for a router that
is not reachable yet (answers queue meanwhile, up to MAX_PENDING); a broken one is opened again
after a pause, once there is something to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import grpc
from prometheus_client import Counter

from services.common.pki import ROUTER
from services.common.tls import TlsFiles
from services.common.tls import channel as tls_channel
from switchyard.v1 import inference_pb2, router_pb2, router_pb2_grpc

log = logging.getLogger(__name__)

MAX_PENDING = 64  # answers queued or written but not yet answered; more are dropped (counted)
RETRY_SECONDS = 1.0  # pause before opening a broken stream again
LOG_EVERY_SECONDS = 30.0

FEEDS = Counter(
    "switchyard_safety_cache_feeds_total",
    "Completed cacheable turns sent to the response cache: stored, refused, dropped, failed.",
    ["result"],
)
DONE = (inference_pb2.FINISH_REASON_STOP, inference_pb2.FINISH_REASON_LENGTH)


class CacheFeed:
    def __init__(self, target: str, tls: TlsFiles | None) -> None:
        self.target = target
        self._tls = tls
        self._queue: asyncio.Queue[router_pb2.CachePutRequest] = asyncio.Queue()
        self._unanswered = 0  # written on the current stream, not answered yet
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None  # opened on the first answer
        self._logged = float("-inf")

    def offer(
        self, entry: str, deltas: list[inference_pb2.Delta], final: inference_pb2.Final
    ) -> None:
        """Send a turn that ended with `final` for storing, unless it is not a complete one."""
        if final.finish_reason not in DONE:
            return
        if self._queue.qsize() + self._unanswered >= MAX_PENDING:
            FEEDS.labels("dropped").inc()
            return
        turn = router_pb2.CachedTurn(deltas=deltas, final=final)
        self._queue.put_nowait(router_pb2.CachePutRequest(entry=entry, turn=turn))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="cache-feed")

    async def close(self) -> None:
        """Stop sending (what is still queued is dropped, uncounted)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _run(self) -> None:
        """Keep a stream to the router while there is something to send."""
        if self._channel is None:
            self._channel = tls_channel(self.target, self._tls, peer=ROUTER)
        stub = router_pb2_grpc.ResponseCacheStub(self._channel)
        while True:
            try:
                await self._stream(stub)
                self._lost("the router ended the stream")
            except grpc.aio.AioRpcError as e:
                self._lost(e.code().name)
            except Exception as e:  # (a write on a call that has just ended, ...)
                self._lost(repr(e))
            await asyncio.sleep(RETRY_SECONDS)
            if self._queue.empty():
                return  # opened again by the next offer

    async def _stream(self, stub: router_pb2_grpc.ResponseCacheStub) -> None:
        """Write queued answers on one stream until it ends; raises what broke it. The stream
        waits for the router to be reachable (what arrives meanwhile waits in the queue)."""
        call = stub.Store(wait_for_ready=True)

        async def write() -> None:
            while True:
                request = await self._queue.get()
                self._unanswered += 1
                await call.write(request)

        async def read() -> None:
            async for got in call:
                self._unanswered -= 1
                FEEDS.labels("stored" if got.stored else "refused").inc()

        tasks = {asyncio.create_task(write()), asyncio.create_task(read())}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            call.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            FEEDS.labels("failed").inc(self._unanswered)  # written, never answered
            self._unanswered = 0

    def _lost(self, why: str) -> None:
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY_SECONDS:
            self._logged = now
            log.warning("response cache at %s: stream lost (%s); reopening", self.target, why)
