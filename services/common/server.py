"""gRPC server bootstrap shared by every service: health, reflection, errors, graceful stop.

    server, port = await create_server("127.0.0.1:0", [add_my_servicer], ["pkg.MyService"])
    await server.start()

`create_server` is apart from serving so tests bind port 0 and read the port back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.errors import ErrorInterceptor
from services.common.tls import AccessPolicy, TlsFiles

log = logging.getLogger(__name__)

# Large enough for long prompts; Envoy's default max gRPC message size is similar.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# The largest request body Envoy buffers for the mesh's ext_proc filters (the mesh's transport
# limit): Envoy answers a larger one RESOURCE_EXHAUSTED itself, naming the limit.
MAX_REQUEST_BODY_BYTES = 16 * 1024 * 1024

# Request metadata a service accepts: all that Envoy forwards under its own header limits (96
# KiB by default; the router refuses over 64 KiB with a message) plus the mesh's headers. gRPC's
# default (8 KiB, refusing at random up to 16 KiB) would fail turns Envoy let through.
MAX_METADATA_BYTES = 128 * 1024

LIVENESS = "liveness"  # the health service name probes of liveness ask for
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_metadata_size", MAX_METADATA_BYTES),
    ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Clients (engines on their registration stream) may ping every few seconds.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),
]


class Server:
    """A started-or-not grpc.aio server with its health servicer and bound port."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        health_servicer: health.aio.HealthServicer,
        service_names: Sequence[str],
    ) -> None:
        self.grpc = server
        self.port = port
        self.health = health_servicer
        self.service_names = list(service_names)
        self.probes: grpc.aio.Server | None = None  # plaintext health only (health_listen)
        self.probe_port = 0

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def start(self) -> None:
        await self.grpc.start()
        if self.probes is not None:
            await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
            await self.probes.start()

    async def stop(self, grace: float | None) -> None:
        await self.health.enter_graceful_shutdown()
        await self.grpc.stop(grace)
        if self.probes is not None:
            await self.probes.stop(0)


async def create_server(
    address: str,
    add_servicers: Iterable[Callable[[grpc.aio.Server], None]],
    service_names: Sequence[str],
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    tls: TlsFiles | None = None,
    policy: AccessPolicy | None = None,
    health_listen: str = "",
) -> Server:
    """Build a server with health (per service, NOT_SERVING until told) and reflection.

    With `tls`, it serves mutual TLS only and every call is checked against `policy` (the
    caller's role); without, it serves plaintext and trusts every caller (logged).

    With `health_listen`, the same health service is also served there in plaintext and
    nothing else, for probes that cannot present a certificate (Kubernetes' gRPC probes):
    the overall status ("") and each service's say whether it serves; `liveness` is SERVING
    while the process answers at all (a drain does not change it)."""
    authorize = policy.check if (tls is not None and policy is not None) else None
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor(authorize), *interceptors], options=SERVER_OPTIONS
    )
    for add in add_servicers:
        add(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    if tls is not None:
        port = server.add_secure_port(address, tls.server_credentials())
    else:
        log.warning(
            "serving PLAINTEXT gRPC on %s: no caller is authenticated, every caller is trusted",
            address,
        )
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    srv = Server(server, port, health_servicer, service_names)
    if health_listen:
        srv.probes = grpc.aio.server(options=SERVER_OPTIONS)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, srv.probes)
        srv.probe_port = srv.probes.add_insecure_port(health_listen)
        if srv.probe_port == 0:
            raise OSError(f"cannot bind the health probe server to {health_listen}")
    await srv.set_serving(False)
    return srv


def install_signal_handlers(stop: asyncio.Event) -> None:
    """Set `stop` on SIGTERM or SIGINT (Ctrl-C) so the service can drain and exit."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def write_ready_file(path: Path, data: dict[str, Any]) -> None:
    """Atomically write where a service listens (JSON), for supervisors and tests."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def host_port(address: str) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port" into its parts."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)
