"""`switchyard.v1.Registry`: engines register and stream their load and KV-cache events.

A stream's first message must be the registration; every later message is an engine event fed
to the registry (load → routability and in-flight accounting, KV events → the prefix index)
or to quota admission (turn usage reports: reservations accepted and settled).
When the stream ends, for whatever reason, the engine leaves the routable set at once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable

import grpc

from services.common.errors import InvalidArgument
from services.common.headers import endpoint_address
from services.common.server import host_port
from services.router.registry import Registry
from switchyard.v1 import engine_pb2, router_pb2, router_pb2_grpc

log = logging.getLogger(__name__)


class RegistryService(router_pb2_grpc.RegistryServicer):
    def __init__(
        self,
        registry: Registry,
        heartbeat_seconds: float,
        pools: set[str],
        on_usage: Callable[[str, engine_pb2.TurnUsage], None] | None = None,
        on_gone: Callable[[str], None] | None = None,
        router_id: str = "",
    ) -> None:
        self._registry = registry
        # Turn usage reports (quota settlement), and an engine's stream closing.
        self._on_usage = on_usage
        self._on_gone = on_gone
        self._heartbeat = heartbeat_seconds
        self.pools = pools  # the configured pools (a live config reload replaces them)
        self.router_id = router_id or f"router-{uuid.uuid4().hex[:8]}"

    def add_to_server(self, server: grpc.aio.Server) -> None:
        router_pb2_grpc.add_RegistryServicer_to_server(self, server)

    async def Connect(
        self, requests: AsyncIterator[router_pb2.RegistryMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[router_pb2.RegistryReply]:
        first = await anext(aiter(requests), None)
        if first is None or not first.HasField("register"):
            raise InvalidArgument("the first message of Registry.Connect must be `register`")
        reg = first.register
        try:
            host, port = host_port(reg.address)
            endpoint_address(host, port)
        except ValueError:
            raise InvalidArgument(
                f"register.address must be IP:PORT (Envoy matches endpoints by address), "
                f"got {reg.address!r}"
            ) from None
        if reg.info.pool not in self.pools:
            raise InvalidArgument(
                f"register.info.pool: pool {reg.info.pool!r} is not configured "
                f"(pools: {', '.join(sorted(self.pools))})"
            )
        engine_id = reg.info.engine_id
        mine = self._registry.register(reg.info, reg.address)
        log.info("engine %s joined pool %s at %s", engine_id, reg.info.pool, reg.address)
        yield router_pb2.RegistryReply(router_id=self.router_id, heartbeat_seconds=self._heartbeat)
        try:
            async for msg in requests:
                ev = msg.event
                if ev.HasField("load"):
                    self._registry.on_load(engine_id, ev.load)
                elif ev.HasField("kv"):
                    self._registry.on_kv_events(engine_id, ev.kv)
                elif ev.HasField("usage") and self._on_usage is not None:
                    self._on_usage(engine_id, ev.usage)
        finally:
            if self._on_gone is not None:
                self._on_gone(engine_id)
            # Only drop the engine if this stream still owns it (it may have re-registered).
            if self._registry.get(engine_id) is mine:
                self._registry.remove(engine_id, "registration stream closed")
                log.info("engine %s left (registration stream closed)", engine_id)
