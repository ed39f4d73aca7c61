"""Feeds the router's response cache from the response path (services/router/response_cache.py).

The router marks a cacheable turn it could not answer from the cache with
`x-switchyard-cache-store`; the safety filter records that turn as the client receives it
(scrubbed) and, once it has ended complete (a Final with stop or length) and unblocked, sends it
to the router's `ResponseCache.Put` in the background. A store that is slow or down loses that
answer only: the turn itself is never held for it.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from prometheus_client import Counter

from services.common.pki import ROUTER
from services.common.tls import TlsFiles
from services.common.tls import channel as tls_channel
from switchyard.v1 import inference_pb2, router_pb2, router_pb2_grpc

log = logging.getLogger(__name__)

PUT_TIMEOUT_SECONDS = 2.0
MAX_PENDING = 64  # answers on their way at once; more are dropped (counted)
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
        self._stub: router_pb2_grpc.ResponseCacheStub | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._logged = float("-inf")

    def offer(
        self, entry: str, deltas: list[inference_pb2.Delta], final: inference_pb2.Final
    ) -> None:
        """Send a turn that ended with `final` for storing, unless it is not a complete one."""
        if final.finish_reason not in DONE:
            return
        if len(self._pending) >= MAX_PENDING:
            FEEDS.labels("dropped").inc()
            return
        turn = router_pb2.CachedTurn(deltas=deltas, final=final)
        task = asyncio.get_running_loop().create_task(self._put(entry, turn))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _put(self, entry: str, turn: router_pb2.CachedTurn) -> None:
        if self._stub is None:
            self._stub = router_pb2_grpc.ResponseCacheStub(
                tls_channel(self.target, self._tls, peer=ROUTER)
            )
        try:
            got = await self._stub.Put(
                router_pb2.CachePutRequest(entry=entry, turn=turn), timeout=PUT_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as e:
            FEEDS.labels("failed").inc()
            now = time.monotonic()
            if now - self._logged >= LOG_EVERY_SECONDS:
                self._logged = now
                log.warning("response cache at %s unreachable: %s", self.target, e.code().name)
            return
        FEEDS.labels("stored" if got.stored else "refused").inc()
