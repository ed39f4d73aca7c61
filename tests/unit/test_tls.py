"""The local PKI and mutual TLS with per-method roles (services/common/pki.py, tls.py), on real
gRPC servers on loopback."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from services.common import pki
from services.common.server import create_server
from services.common.tls import ANY, AccessPolicy, TlsConfig, channel

SERVICE = "test.Guarded"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_local_pki_names_each_role_and_keeps_keys_private(tmp_path: Path):
    p = pki.ensure_pki(tmp_path)
    for role in pki.ROLES:
        cert = _cert(p.cert(role))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert pki.spiffe_id(role) in san.get_values_for_type(x509.UniformResourceIdentifier)
        assert "localhost" in san.get_values_for_type(x509.DNSName)
        assert p.key(role).stat().st_mode & 0o077 == 0
    assert p.ca_key.stat().st_mode & 0o077 == 0
    serial = _cert(p.cert(pki.ENGINE)).serial_number
    pki.ensure_pki(tmp_path)  # nothing to do: the same certificates
    assert _cert(p.cert(pki.ENGINE)).serial_number == serial


def test_a_certificate_close_to_expiry_is_issued_again(tmp_path: Path):
    p = pki.ensure_pki(tmp_path)
    pki.issue(p, pki.ROUTER, days=2)  # less than RENEW_DAYS left
    short = _cert(p.cert(pki.ROUTER))
    assert short.not_valid_after_utc - datetime.datetime.now(datetime.UTC) < datetime.timedelta(3)
    pki.ensure_pki(tmp_path)
    assert _cert(p.cert(pki.ROUTER)).serial_number != short.serial_number


def test_tls_config_needs_cert_and_key_together():
    with pytest.raises(ValueError, match=r"tls\.cert and tls\.key go together"):
        TlsConfig.model_validate({"cert": "/x.pem"})
    assert TlsConfig.model_validate({"plaintext": True}).files(pki.ENGINE) is None


def test_the_longest_prefix_decides_and_health_is_open():
    policy = AccessPolicy({"/a.S/": {"envoy"}, "/a.S/Admin": {"operator"}})
    assert policy.roles_for("/a.S/Generate") == {"envoy"}
    assert policy.roles_for("/a.S/Admin") == {"operator"}
    assert policy.roles_for("/grpc.health.v1.Health/Check") == {ANY}
    assert policy.roles_for("/b.T/X") == frozenset()


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"ok"


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[str, TlsConfig]]:
    cfg = TlsConfig.model_validate({"pki_dir": tmp_path / "pki"})

    def add(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "Open": grpc.unary_unary_rpc_method_handler(echo),
                        "Admin": grpc.unary_unary_rpc_method_handler(echo),
                    },
                ),
            )
        )

    policy = AccessPolicy(
        {f"/{SERVICE}/Open": {"envoy", "operator"}, f"/{SERVICE}/Admin": {"operator"}}
    )
    server = await create_server(
        "127.0.0.1:0", [add], [SERVICE], tls=cfg.files(pki.ROUTER), policy=policy
    )
    await server.start()
    yield f"127.0.0.1:{server.port}", cfg
    await server.stop(None)


async def _call(target: str, tls, method: str) -> str:  # type: ignore[no-untyped-def]
    async with channel(target, tls) as ch:
        try:
            await ch.unary_unary(f"/{SERVICE}/{method}")(b"x", timeout=5)
            return "ok"
        except grpc.aio.AioRpcError as e:
            return f"{e.code().name}: {e.details()}"


async def test_each_method_is_open_to_its_roles_only(guarded):
    target, cfg = guarded
    assert await _call(target, cfg.files(pki.OPERATOR), "Admin") == "ok"
    assert await _call(target, cfg.files(pki.ENVOY), "Open") == "ok"
    denied = await _call(target, cfg.files(pki.ENVOY), "Admin")
    assert denied == (
        f"PERMISSION_DENIED: /{SERVICE}/Admin is not open to role 'envoy' (it is open to: operator)"
    )
    assert (await _call(target, cfg.files(pki.ENGINE), "Open")).startswith("PERMISSION_DENIED")


async def test_no_certificate_or_one_from_another_ca_does_not_get_in(guarded, tmp_path: Path):
    target, _ = guarded
    assert (await _call(target, None, "Open")).startswith("UNAVAILABLE")  # plaintext
    stranger = TlsConfig.model_validate({"pki_dir": tmp_path / "other-ca"})
    assert (await _call(target, stranger.files(pki.OPERATOR), "Open")).startswith("UNAVAILABLE")


async def test_a_renewed_server_certificate_is_served_without_a_restart(guarded):
    target, cfg = guarded
    files = cfg.files(pki.ROUTER)
    assert files is not None
    before = _cert(files.cert).serial_number
    assert _presented(target, cfg) == before
    pki.issue(pki.Pki(files.cert.parent), pki.ROUTER)
    after = _cert(files.cert).serial_number
    assert after != before
    # A new connection gets the new certificate (read at its handshake) and still works.
    assert _presented(target, cfg) == after
    assert await _call(target, cfg.files(pki.OPERATOR), "Open") == "ok"


def _presented(target: str, cfg: TlsConfig) -> int:
    """The serial number of the certificate the server presents to a new connection."""
    import socket
    import ssl

    op = cfg.files(pki.OPERATOR)
    assert op is not None
    ctx = ssl.create_default_context(cafile=str(op.ca))
    ctx.load_cert_chain(str(op.cert), str(op.key))
    ctx.set_alpn_protocols(["h2"])
    host, port = target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_probes_without_a_certificate_see_health_and_nothing_else(tmp_path: Path):
    """health_listen: Kubernetes' gRPC probes cannot present a certificate."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.common.server import LIVENESS

    files = TlsConfig(pki_dir=tmp_path).files(pki.ROUTER)
    server = await create_server(
        "127.0.0.1:0",
        [],
        [SERVICE],
        tls=files,
        policy=AccessPolicy({}),
        health_listen="127.0.0.1:0",
    )
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.probe_port}") as ch:
            check = health_pb2_grpc.HealthStub(ch).Check

            async def status(service: str) -> int:
                return (await check(health_pb2.HealthCheckRequest(service=service))).status

            assert await status(LIVENESS) == serving  # alive from the start
            assert await status("") != serving and await status(SERVICE) != serving
            await server.set_serving(True)
            assert await status("") == serving and await status(SERVICE) == serving
            await server.set_serving(False)  # draining: not ready, still alive
            assert await status("") != serving and await status(LIVENESS) == serving
            with pytest.raises(grpc.aio.AioRpcError) as e:  # nothing but health there
                await ch.unary_unary(f"/{SERVICE}/Call")(b"")
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError):  # the service's own port: TLS only
                await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    finally:
        await server.stop(0)


def test_the_cli_takes_the_operator_identity_from_a_kubernetes_secrets_files(tmp_path: Path):
    """`--operator-tls DIR`: ca.crt, tls.crt, tls.key as `kubectl get secret` gives them;
    the local PKI is neither read nor created."""
    import argparse
    import shutil

    from services.mesh.cli import _operator_tls

    p = pki.ensure_pki(tmp_path / "pki")
    secret = tmp_path / "secret"
    secret.mkdir()
    shutil.copy(p.ca, secret / "ca.crt")
    shutil.copy(p.cert(pki.OPERATOR), secret / "tls.crt")
    with pytest.raises(SystemExit, match=r"no tls\.key there"):  # the key is missing
        _operator_tls(argparse.Namespace(operator_tls=str(secret)))
    shutil.copy(p.key(pki.OPERATOR), secret / "tls.key")
    files = _operator_tls(argparse.Namespace(operator_tls=str(secret)))
    assert (files.ca, files.cert, files.key) == (  # type: ignore[attr-defined]
        secret / "ca.crt", secret / "tls.crt", secret / "tls.key",
    )  # fmt: skip
