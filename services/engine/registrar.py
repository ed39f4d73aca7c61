"""Keep this engine registered with every router replica: one long-lived `Registry.Connect`
stream to each.

`Registrations` resolves the configured router address (`router: HOST:PORT`) every few seconds
and keeps a `Registrar` per address it names: one for an IP or a single router, one per replica
for a name with several (on Kubernetes, the routers' headless Service), so every replica knows
every engine and makes the same decisions (and serves Envoy the same config). Each replica is
checked by its role, not the address dialled (`tls.channel(peer=ROUTER)`). A turn's usage report
goes to the replica that reserved it (its id prefixes the reservation id), else to any.

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
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from services.common.pki import ROUTER
from services.common.server import host_port
from services.common.tls import TlsFiles
from services.common.tls import channel as tls_channel
from services.engine.load import LoadTracker, Watcher
from switchyard.v1 import engine_pb2, router_pb2, router_pb2_grpc

log = logging.getLogger(__name__)

BACKOFF_INITIAL_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 2.0
RESOLVE_SECONDS = 5.0  # how often the router address is resolved again (replicas come and go)
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

    async def _messages(self, watcher: Watcher) -> AsyncIterator[router_pb2.RegistryMessage]:
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
        watcher = self._tracker.watch(kv_events=True, usage=True)
        async with tls_channel(self._router, self._tls, CHANNEL_OPTIONS, peer=ROUTER) as channel:
            call = router_pb2_grpc.RegistryStub(channel).Connect(self._messages(watcher))
            async for reply in call:
                if not self.registered.is_set():
                    self.connects += 1
                    watcher.router_id = reply.router_id
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


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` names, in a stable order (an IP names itself)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class Registrations:
    """A `Registrar` for each router replica the configured address names, kept in step with
    it (resolved every `resolve_seconds`): a replica that appears is registered with, one gone
    is let go. Resolution failing keeps the replicas known. `registrar(target)` makes the
    registrar for one replica's HOST:PORT."""

    def __init__(
        self,
        router_address: str,
        registrar: Callable[[str], Registrar],
        *,
        resolve_seconds: float = RESOLVE_SECONDS,
        resolver: Resolver = resolve,
    ) -> None:
        self._host, self._port = host_port(router_address)
        self._registrar = registrar
        self._resolve_seconds = resolve_seconds
        self._resolver = resolver
        self.replicas: dict[str, tuple[Registrar, asyncio.Task[None]]] = {}

    @property
    def registered(self) -> int:
        """How many replicas this engine is registered with now."""
        return sum(r.registered.is_set() for r, _ in self.replicas.values())

    async def _refresh(self) -> None:
        try:
            addresses = await self._resolver(self._host, self._port)
        except OSError as e:
            log.warning("router address %s:%s does not resolve: %s", self._host, self._port, e)
            return
        if not addresses:
            return
        targets = {f"[{a}]:{self._port}" if ":" in a else f"{a}:{self._port}" for a in addresses}
        for target in sorted(targets - self.replicas.keys()):
            registrar = self._registrar(target)
            task = asyncio.create_task(registrar.run(), name=f"registrar {target}")
            self.replicas[target] = (registrar, task)
            if len(targets) > 1 or target != f"{self._host}:{self._port}":
                log.info("router replica %s (of %s:%s)", target, self._host, self._port)
        for target in sorted(self.replicas.keys() - targets):
            log.info("router replica %s is gone from %s: unregistering", target, self._host)
            _, task = self.replicas.pop(target)
            task.cancel()

    async def run(self) -> None:
        """Stay registered with every replica until cancelled."""
        try:
            while True:
                await self._refresh()
                await asyncio.sleep(self._resolve_seconds)
        finally:
            for _, task in self.replicas.values():
                task.cancel()
            await asyncio.gather(*(t for _, t in self.replicas.values()), return_exceptions=True)
