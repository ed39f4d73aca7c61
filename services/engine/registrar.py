"""Keep this engine registered with the router: one long-lived `Registry.Connect` stream.

The stream opens with the engine's registration (its EngineInfo and address), then carries
every load report (on change, and at least every heartbeat) and KV-cache event batch the engine
produces, starting with a replay of the blocks it holds (so a router that restarted knows the
engine's cache at once). If the router is away or the stream breaks, the engine reconnects with
jittered exponential backoff (0.2 s up to 2 s) and registers again; HTTP/2 keepalive pings find a
router that vanished without closing the connection. The router drops an engine whose stream
closes, and stops routing to one whose reports stop until they resume.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable

import grpc

from services.common.tls import TlsFiles
from services.common.tls import channel as tls_channel
from services.engine.load import LoadTracker
from switchyard.v1 import engine_pb2, router_pb2, router_pb2_grpc

log = logging.getLogger(__name__)

BACKOFF_INITIAL_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 2.0
# Ping the router when the stream is quiet, and give up on it when a ping goes unanswered.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


class Registrar:
    def __init__(
        self,
        router_address: str,
        engine_address: str,
        info: Callable[[], engine_pb2.EngineInfo],
        tracker: LoadTracker,
        heartbeat_seconds: float,
        tls: TlsFiles | None = None,
    ) -> None:
        self._tls = tls  # the engine's identity (the registry takes engines only)
        self._router = router_address
        self._address = engine_address
        self._info = info
        self._tracker = tracker
        self._heartbeat = heartbeat_seconds
        self.registered = asyncio.Event()  # set while a registration stream is up
        self.connects = 0

    async def _messages(self) -> AsyncIterator[router_pb2.RegistryMessage]:
        watcher = self._tracker.watch(kv_events=True, usage=True)
        try:
            yield router_pb2.RegistryMessage(
                register=router_pb2.EngineRegistration(info=self._info(), address=self._address)
            )
            async for event in watcher.events(self._heartbeat):
                yield router_pb2.RegistryMessage(event=event)
        finally:
            self._tracker.unwatch(watcher)

    async def _session(self) -> None:
        # A channel per session: a renewed certificate is read at the next reconnect.
        async with tls_channel(self._router, self._tls, CHANNEL_OPTIONS) as channel:
            call = router_pb2_grpc.RegistryStub(channel).Connect(self._messages())
            async for reply in call:
                if not self.registered.is_set():
                    self.connects += 1
                    log.info("registered with router %s (%s)", reply.router_id, self._router)
                    self.registered.set()

    async def run(self) -> None:
        """Stay registered until cancelled."""
        backoff = BACKOFF_INITIAL_SECONDS
        while True:
            try:
                await self._session()
                log.warning("router %s closed the registration stream", self._router)
            except grpc.aio.AioRpcError as e:
                if self.registered.is_set() or backoff >= BACKOFF_MAX_SECONDS:
                    log.warning(
                        "registration with router %s: %s %s",
                        self._router,
                        e.code().name,
                        e.details(),
                    )
            if self.registered.is_set():
                backoff = BACKOFF_INITIAL_SECONDS
            self.registered.clear()
            # Jitter: engines that lost the same router do not all reconnect in one instant.
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
