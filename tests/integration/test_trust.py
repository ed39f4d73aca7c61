"""Trust, on the shared mesh: every caller authenticated at the edge (API keys, JWTs), only the
mesh writes its internal headers, and every internal hop is mutual TLS with per-role access.
Each finding of the issue is a refused attempt here."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.common.pki import ENGINE, ENVOY, OPERATOR
from services.common.tls import TlsConfig
from services.common.tls import channel as tls_channel
from services.mesh.client import generate, make_request
from services.mesh.up import Mesh
from switchyard.v1 import (
    engine_pb2,
    inference_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from tests.integration.conftest import mesh_channel
from tests.integration.test_engine import long_text
from tests.integration.test_resilience import status as _status
from tests.otlp_collector import OtlpCollector

pytestmark = pytest.mark.integration


async def refused(mesh: Mesh, key: str, text: str = "hi", **request: Any) -> grpc.aio.AioRpcError:
    async with mesh_channel(mesh, key) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await generate(
                inference_pb2_grpc.InferenceStub(ch), make_request(text, max_tokens=2, **request)
            )
    return e.value


async def served(mesh: Mesh, key: str, text: str = "hi", **kw: Any) -> Any:
    async with mesh_channel(mesh, key) as ch:
        return await generate(
            inference_pb2_grpc.InferenceStub(ch), make_request(text, max_tokens=2, **kw)
        )


async def new_key(admin: Any, tenant: str, tier: str = "", models: tuple[str, ...] = ()) -> Any:
    return await admin.CreateKey(
        router_pb2.CreateKeyRequest(tenant=tenant, tier=tier, models=list(models), name="trust")
    )


# -- callers have identities ----------------------------------------------------------------


async def test_no_key_a_garbage_key_and_a_revoked_key_are_unauthenticated(mesh: Mesh, admin):
    e = await refused(mesh, "")
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED and "no credentials" in e.details()
    e = await refused(mesh, "garbage")
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    assert e.details() == "the API key is not valid (unknown or revoked)"

    created = await new_key(admin, "revoke-me")
    assert (await served(mesh, created.secret)).final is not None
    await admin.RevokeKey(router_pb2.RevokeKeyRequest(key_id=created.key.key_id))
    revoked = time.monotonic()
    while True:  # revocation takes effect within a second, without a restart
        try:
            await served(mesh, created.secret)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            break
        assert time.monotonic() - revoked < 1.0, "a revoked key still served after 1 s"
        await asyncio.sleep(0.05)


async def test_a_model_the_key_may_not_use_is_permission_denied(mesh: Mesh, admin):
    small_only = await new_key(admin, "small-only", models=("small",))
    assert (await served(mesh, small_only.secret, model="chat")).final.served_by.model == "small"
    e = await refused(mesh, small_only.secret, model="reasoning")
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED
    assert e.details() == (
        "model 'reasoning' (large) is not allowed for tenant 'small-only' (allowed: small)"
    )
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await new_key(admin, "x", models=("gpt-17",))
    assert (
        bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "models[0]" in bad.value.details()
    )


async def test_a_jwt_maps_to_its_tenant_and_bad_ones_are_refused(mesh: Mesh, idp):
    # The tenant comes from the token: "strict" rejects prompts holding PII.
    strict = idp(sub="svc-1", tenant="strict")
    e = await refused(mesh, strict, "Mail bob@example.com")
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "prompt contains EMAIL" in e.details()
    assert (await served(mesh, idp(sub="svc-2", tenant="acme"))).final is not None
    for token, message in (
        (idp(tenant="acme", aud="someone-else"), "audience is not one of switchyard"),
        (idp(tenant="acme", exp=int(time.time()) - 3600), "the JWT has expired"),
        (idp(tenant="acme", iss="https://evil.test"), "issuer is not"),
    ):
        e = await refused(mesh, token)
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED and message in e.details(), token


def test_keys_from_the_cli(mesh: Mesh):
    cli = [sys.executable, "-m", "services.mesh.cli", "admin", "keys"]
    router = ["--router", mesh.router_address]
    out = subprocess.run(
        [*cli, "create", "--tenant", "cli-tenant", "--tier", "free", *router],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    secret = out.stdout.strip()
    assert secret.startswith("sy-") and "shown once" in out.stderr
    key_id = secret[3:].split(".")[0]
    listed = subprocess.run(
        [*cli, "list", *router], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    line = next(line for line in listed.splitlines() if line.startswith(key_id))
    assert "active" in line and "cli-tenant" in line and "free" in line
    assert secret not in listed
    subprocess.run([*cli, "revoke", key_id, *router], timeout=60, check=True, capture_output=True)
    listed = subprocess.run(
        [*cli, "list", *router], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "revoked" in next(line for line in listed.splitlines() if line.startswith(key_id))


# -- only the mesh writes internal headers --------------------------------------------------


async def test_forged_internal_headers_change_nothing(mesh: Mesh, collector: OtlpCollector):
    large = next(e.address for e in mesh.engines if e.name == "h100-large-0")
    forged = [
        ("x-switchyard-tenant", "strict"),  # strict would refuse the PII below
        ("x-switchyard-tier", "premium"),
        ("x-switchyard-priority", "99"),
        ("x-switchyard-pool", "h100-large"),
        ("x-switchyard-endpoint", large),
        ("x-switchyard-engine", "h100-large-0"),
    ]
    async with mesh_channel(mesh) as ch:
        reply = await generate(
            inference_pb2_grpc.InferenceStub(ch),
            make_request("Write to bob@example.com", model="small", max_tokens=2),
            metadata=forged,
        )
    assert reply.final.served_by.pool == "l4-small"  # the router's pick, not the client's
    for name in ("switchyard.router.pick", "switchyard.engine.generate"):  # separate exporters
        await collector.wait_for_async(
            lambda s, n=name: s.trace_id == reply.trace_id and s.name == n
        )
    spans = {s.name: s.attributes for s in collector.by_trace(reply.trace_id)}
    assert spans["switchyard.router.pick"]["switchyard.tenant"] == "dev"
    assert spans["switchyard.engine.generate"]["switchyard.priority"] == 0  # dev: standard


async def test_the_tier_sets_the_priority_and_a_client_may_only_lower_it(
    mesh: Mesh, admin, collector: OtlpCollector
):
    free = (await new_key(admin, "free-tenant", tier="free")).secret
    premium = (await new_key(admin, "premium-tenant", tier="premium")).secret
    for key, asked, runs in ((free, 100, -10), (premium, 0, 10), (premium, 3, 3)):
        reply = await served(mesh, key, priority=asked)
        await collector.wait_for_async(
            lambda s, t=reply.trace_id: s.trace_id == t and s.name == "switchyard.engine.generate"
        )
        [span] = [
            s for s in collector.by_trace(reply.trace_id) if s.name == "switchyard.engine.generate"
        ]
        assert span.attributes["switchyard.priority"] == runs, (asked, runs)


async def test_sessions_belong_to_their_tenant(mesh: Mesh, tenant_keys):
    a = tenant_keys["tenant-0"]
    engine = (await served(mesh, a, long_text(30), session_id="shared-id")).final.served_by.engine
    async with tls_channel(mesh.router_address, mesh.operator_tls()) as ch:
        router = router_pb2_grpc.RouterStub(ch)

        async def session_scores(tenant: str) -> dict[str, float]:
            req = make_request(long_text(30), max_tokens=2, session_id="shared-id")
            pick = await router.Pick(router_pb2.PickRequest(request=req, tenant=tenant))
            return {c.engine_id: c.scores["session-affinity"] for c in pick.candidates}

        assert (await session_scores("tenant-0"))[engine] > 0
        assert set((await session_scores("tenant-1")).values()) == {0.0}


# -- mutual TLS on every internal hop --------------------------------------------------------


def _as(role: str | None) -> Any:
    return TlsConfig.model_validate({}).files(role) if role else None


async def _call(target: str, role: str | None, coro: Any) -> str:
    async with tls_channel(target, _as(role)) as ch:
        try:
            await coro(ch)
            return "ok"
        except grpc.aio.AioRpcError as e:
            return e.code().name


async def test_only_envoy_and_operators_reach_an_engine(mesh: Mesh):
    engine = mesh.engines[0].address

    async def generate_one(ch: grpc.aio.Channel) -> None:
        await generate(inference_pb2_grpc.InferenceStub(ch), make_request("hi", max_tokens=2))

    assert await _call(engine, OPERATOR, generate_one) == "ok"
    assert await _call(engine, ENVOY, generate_one) == "ok"
    assert await _call(engine, ENGINE, generate_one) == "PERMISSION_DENIED"
    assert await _call(engine, None, generate_one) == "UNAVAILABLE"  # no TLS: no handshake


async def test_an_engine_without_a_mesh_certificate_cannot_register(mesh: Mesh, tmp_path: Path):
    async def register(ch: grpc.aio.Channel) -> None:
        async def messages():  # type: ignore[no-untyped-def]
            yield router_pb2.RegistryMessage(
                register=router_pb2.EngineRegistration(
                    info=engine_pb2.EngineInfo(
                        engine_id="impostor", pool="l4-small", model="small", kv_block_size=16
                    ),
                    address="127.0.0.1:9",
                )
            )
            await asyncio.sleep(2)

        async for _ in router_pb2_grpc.RegistryStub(ch).Connect(messages(), timeout=5):
            pass

    stranger = TlsConfig.model_validate({"pki_dir": tmp_path / "another-ca"}).files(ENGINE)
    async with tls_channel(mesh.router_address, stranger) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await register(ch)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails
    assert await _call(mesh.router_address, ENVOY, register) == "PERMISSION_DENIED"
    assert await _call(mesh.router_address, None, register) == "UNAVAILABLE"
    states = {e.engine_id for p in (await _status(mesh)).pools for e in p.engines}
    assert "impostor" not in states


async def test_drain_needs_the_operator_identity(mesh: Mesh):
    async def drain(ch: grpc.aio.Channel) -> None:
        await router_pb2_grpc.AdminStub(ch).Drain(
            router_pb2.AdminDrainRequest(engine_id="l4-small-0"), timeout=5
        )

    for role in (ENGINE, ENVOY):
        assert await _call(mesh.router_address, role, drain) == "PERMISSION_DENIED"
    assert await _call(mesh.router_address, None, drain) == "UNAVAILABLE"
    assert {e.state for p in (await _status(mesh)).pools for e in p.engines} == {"serving"}


# -- bounded exposure -------------------------------------------------------------------------


def test_envoys_admin_is_read_only(mesh: Mesh):
    with urllib.request.urlopen(f"{mesh.envoy_admin}/ready", timeout=5) as r:
        assert r.read().strip() == b"LIVE"
    request = urllib.request.Request(f"{mesh.envoy_admin}/quitquitquit", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=5)
    assert e.value.code == 405 and b"read-only" in e.value.read()
    assert mesh.envoy is not None and mesh.envoy.poll() is None  # still running


async def test_request_headers_over_the_limit_are_resource_exhausted(mesh: Mesh):
    """The router tells the client which limit its headers broke (too many, or too large in
    all); far past it Envoy's HTTP/2 codec drops the stream or, for one header field over HPACK's
    64 KiB, the connection (HTTP/2 has no status for either). Nothing is routed."""

    async def call(extra: list[tuple[str, str]]) -> Any:
        async with mesh_channel(mesh) as ch:
            return await generate(
                inference_pb2_grpc.InferenceStub(ch), make_request("hi", max_tokens=2),
                metadata=extra,
            )  # fmt: skip

    many = [(f"x-extra-{i}", "v") for i in range(120)]
    large = [(f"x-big-{i}", "x" * 25 * 1024) for i in range(3)]
    for extra in (many, large):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(extra)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over the mesh's limits of 64 KiB and 100 headers" in e.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call([("x-huge", "x" * 200 * 1024)])
    assert e.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE)
    # Within the limits (far over gRPC's default 8 KiB of metadata): served, engine included.
    reply = await call([*many[:50], *((f"x-ok-{i}", "x" * 15 * 1024) for i in range(3))])
    assert reply.final is not None
