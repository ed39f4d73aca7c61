"""An engine registered with every router replica (services/engine/registrar.py), each checked
by its role over real mutual TLS: two in-process registries on 127.0.0.1 and 127.0.0.2 (one
port), the name resolved by a fake, the engine's tracker real."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from services.common.pki import ENGINE, ROUTER, ensure_pki, role_host
from services.common.server import create_server
from services.common.tls import TlsConfig, TlsFiles
from services.common.tls import channel as tls_channel
from services.engine.load import LoadTracker
from services.engine.registrar import Registrar, Registrations
from services.router.registry import Registry
from services.router.registry_service import RegistryService
from services.router.server import POLICY
from services.router.testing import make_info
from switchyard.v1 import engine_pb2, router_pb2, router_pb2_grpc

HOSTS = ["127.0.0.1", "127.0.0.2"]


class Replica:
    def __init__(self, name: str) -> None:
        self.registry = Registry()
        self.usage: list[str] = []
        self.service = RegistryService(
            self.registry,
            1.0,
            {"pool"},
            on_usage=lambda _engine, u: self.usage.append(u.reservation_id),
            router_id=name,
        )


def files(pki_dir: Path, role: str) -> TlsFiles:
    tls = TlsConfig(pki_dir=pki_dir).files(role)
    assert tls is not None
    return tls


@contextlib.asynccontextmanager
async def replicas(pki_dir: Path) -> AsyncIterator[tuple[int, list[Replica]]]:
    """Two routers' registries on one port, one on each loopback address."""
    out = [Replica("router-a"), Replica("router-b")]
    port = 0
    servers = []
    for host, r in zip(HOSTS, out, strict=True):
        server = await create_server(
            f"{host}:{port}",
            [r.service.add_to_server],
            ["switchyard.v1.Registry"],
            tls=files(pki_dir, ROUTER),
            policy=POLICY,
        )
        port = server.port
        await server.start()
        servers.append(server)
    try:
        yield port, out
    finally:
        for server in servers:
            await server.grpc.stop(0)


def info() -> engine_pb2.EngineInfo:
    return make_info("e1", pool="pool")


async def eventually(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not within the timeout"
        await asyncio.sleep(0.02)


async def test_an_engine_registers_with_every_replica_the_name_resolves_to(tmp_path: Path):
    ensure_pki(tmp_path)
    names = {"routers": list(HOSTS)}

    async def resolver(host: str, port: int) -> list[str]:
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return names[host]

    async with replicas(tmp_path) as (port, (a, b)):
        tracker = LoadTracker("e1")
        tls = files(tmp_path, ENGINE)
        regs = Registrations(
            f"routers:{port}",
            lambda target: Registrar(target, "127.0.0.1:50061", info, tracker, 0.2, tls),
            resolve_seconds=0.05,
            resolver=resolver,
        )
        task = asyncio.create_task(regs.run())
        try:
            # 127.0.0.2 is in no certificate: the replica is checked by its role's name.
            await eventually(lambda: regs.registered == 2)
            assert a.registry.get("e1") is not None and b.registry.get("e1") is not None
            # A turn's usage goes to the replica that reserved it, else to one of them.
            for res in ("router-b-7.m", "router-a-3", "other-1.m"):
                tracker.publish_usage(engine_pb2.TurnUsage(reservation_id=res, done=True))
            await eventually(lambda: len(a.usage) + len(b.usage) == 3)
            assert "router-b-7.m" in b.usage and "router-a-3" in a.usage
            assert "router-b-7.m" not in a.usage and "router-a-3" not in b.usage
            # A replica gone from the name is let go (its registry sees the stream close).
            names["routers"] = [HOSTS[0]]
            await eventually(lambda: b.registry.get("e1") is None)
            assert a.registry.get("e1") is not None
            assert list(regs.replicas) == [f"{HOSTS[0]}:{port}"]
            # The name not resolving keeps the replicas known.
            del names["routers"]
            await asyncio.sleep(0.2)
            assert regs.registered == 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_a_server_is_checked_by_its_role_not_the_address_dialled(tmp_path: Path):
    ensure_pki(tmp_path)
    replica = Replica("router-a")
    server = await create_server(
        "127.0.0.2:0",
        [replica.service.add_to_server],
        ["switchyard.v1.Registry"],
        tls=files(tmp_path, ROUTER),
        policy=POLICY,
    )
    await server.start()
    target = f"127.0.0.2:{server.port}"
    engine = files(tmp_path, ENGINE)

    async def connect(peer: str) -> None:
        async with tls_channel(target, engine, peer=peer) as ch:
            await (
                router_pb2_grpc.RegistryStub(ch)
                .Connect(iter([router_pb2.RegistryMessage()]), timeout=5)
                .read()
            )

    try:
        with pytest.raises(grpc.aio.AioRpcError) as e:  # the registry's own check: past TLS
            await connect(ROUTER)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for wrong in ("", ENGINE):  # the address (no certificate names it), another role
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await connect(wrong)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.grpc.stop(0)


def test_certificates_name_their_role_host_and_older_ones_are_issued_again(tmp_path: Path):
    from cryptography import x509

    pki = ensure_pki(tmp_path)
    cert = x509.load_pem_x509_certificate(pki.cert(ROUTER).read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert role_host(ROUTER) == "router.switchyard.local"
    assert role_host(ROUTER) in sans.get_values_for_type(x509.DNSName)
    # A certificate from before role hosts (same CA, no such name) is replaced.
    before = pki.cert(ENGINE).read_bytes()
    old = x509.load_pem_x509_certificate(before)
    pki.cert(ENGINE).write_bytes(pki.cert(ROUTER).read_bytes())  # names another role
    ensure_pki(tmp_path)
    again = x509.load_pem_x509_certificate(pki.cert(ENGINE).read_bytes())
    names = again.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert role_host(ENGINE) in names.get_values_for_type(x509.DNSName)
    assert again.serial_number != old.serial_number


def test_two_replicas_that_know_the_same_engines_serve_envoy_the_same_config():
    """Whatever order the engines registered in with each replica, the xDS resources and their
    versions (content hashes) are the same: an Envoy reconnecting to the other replica is told
    nothing new."""
    from services.router.config import MeshConfig
    from services.router.publisher import XdsPublisher
    from services.router.xds import resources
    from services.router.xds.builder import build_snapshot
    from services.router.xds.cache import SnapshotCache

    cfg = MeshConfig.model_validate(
        {
            "router": {"advertise_address": "switchyard-router-replicas:50051"},
            "pools": [
                {"name": "pool", "accelerator": "cpu", "models": [{"name": "m", "tokenizer": "."}]}
            ],
        }
    )
    engines = [(make_info(f"e{i}", pool="pool"), f"10.0.0.{i}:50061") for i in range(3)]
    versions = []
    for order in (engines, engines[::-1]):
        registry = Registry()
        for engine, address in order:
            registry.register(engine, address)
        publisher = XdsPublisher(cfg, registry, SnapshotCache(), cfg.router.advertise_address)
        snapshot = build_snapshot(publisher.spec())
        versions.append({url: snapshot.version(url) for url in resources.PUSH_ORDER})
    assert versions[0] == versions[1] and all(versions[0].values())
