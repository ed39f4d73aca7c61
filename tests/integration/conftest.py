"""Real processes shared by the whole session: one vLLM engine (`switchyard engine`), and the
whole mesh (`Mesh`, as `switchyard up` runs it, supervised) for test_mesh and test_resilience.

Set SWITCHYARD_TEST_ENGINE_READY=/path/to/ready.json to reuse an engine you started yourself
(`switchyard engine --config deploy/local/engine-small.yaml --ready-file ...`) while iterating.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import yaml

from services.common.tls import channel as tls_channel
from services.mesh import procs
from services.mesh.client import CHANNEL_OPTIONS, bearer
from services.mesh.models import default_models_dir, init_models
from services.mesh.up import Mesh
from switchyard.v1 import engine_pb2_grpc, inference_pb2_grpc, router_pb2_grpc
from tests.otlp_collector import OtlpCollector

ROOT = Path(__file__).resolve().parents[2]
SMALL_CONFIG = ROOT / "deploy" / "local" / "engine-small.yaml"
MESH_CONFIG = Path(__file__).with_name("mesh.yaml")

PULSE_SECONDS = 0.1  # how long `pulsed_until` lets the cores run at a time
ENGINE_NICE = 5  # the test mesh's engines yield the CPU to the router, safety and Envoy


@pytest.fixture(scope="session")
def models_dir() -> Path:
    path = default_models_dir()
    init_models(
        path, ["small", "large"], progress=lambda m: print(f"[models] {m}", file=sys.stderr)
    )
    os.environ["SWITCHYARD_MODELS"] = str(path)
    return path


def _cores(engine_pids: list[int]) -> list[psutil.Process]:
    """These engines' vLLM engine cores and their workers (the engines' child processes)."""
    cores = [p for pid in engine_pids for p in psutil.Process(pid).children(recursive=True)]
    assert cores, f"no engine core under pids {engine_pids} to stop"
    return cores


def _signal(processes: list[psutil.Process], sig: int) -> None:
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)


@contextlib.contextmanager
def frozen_cores(engine_pids: list[int]) -> Iterator[None]:
    """These engines' vLLM engine cores (and their workers) stopped with SIGSTOP, then resumed:
    the turns they run keep their slots and make no progress, so none ends by itself, while the
    engines' gRPC fronts go on answering (health, load, drain, accepting turns for the core).
    A turn cannot then finish during a check however fast the model or slow the machine."""
    cores = _cores(engine_pids)
    _signal(cores, signal.SIGSTOP)
    try:
        yield
    finally:
        _signal(cores, signal.SIGCONT)


def _pulse(cores: list[psutil.Process], seconds: float) -> None:
    """Let the stopped cores run for `seconds`, timed in a thread of its own: a starved or busy
    event loop cannot stretch the pulse."""
    _signal(cores, signal.SIGCONT)
    try:
        time.sleep(seconds)
    finally:
        _signal(cores, signal.SIGSTOP)


@contextlib.asynccontextmanager
async def pulsed_until(
    engine_pids: list[int], ready: Awaitable[Any], timeout: float = 60.0
) -> AsyncIterator[Any]:
    """These engines' vLLM cores run in short pulses until `ready` is done; the body then runs
    with them stopped and gets its result. What the client has read and what the body checks
    cannot drift apart: no turn ends in between, however fast the model or however late a
    starved client reads (the cores are stopped while the client catches up)."""
    pending = asyncio.ensure_future(ready)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    cores = _cores(engine_pids)
    _signal(cores, signal.SIGSTOP)
    try:
        while True:
            done, _ = await asyncio.wait([pending], timeout=2)
            if done:
                yield pending.result()
                return
            assert loop.time() < deadline, f"nothing arrived in {timeout:g}s of pulses"
            await asyncio.to_thread(_pulse, cores, PULSE_SECONDS)  # the cores generate a little
    finally:
        pending.cancel()
        _signal(cores, signal.SIGCONT)


def start_test_engine(name: str, tmp: Path, **overrides: Any) -> procs.EngineProcess:
    engine = procs.start_engine(
        SMALL_CONFIG,
        name=name,
        workdir=tmp,
        overrides={"listen": "127.0.0.1:0", "engine_id": name, **overrides},
    )
    engine.wait_ready(timeout=300, on_progress=lambda line: print(line, file=sys.stderr))
    return engine


@pytest.fixture(scope="session")
def engine(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The shared engine's ready info: {engine_id, address, grpc_port, metrics_port, pid}."""
    reuse = os.environ.get("SWITCHYARD_TEST_ENGINE_READY")
    if reuse:
        yield json.loads(Path(reuse).read_text())
        return
    proc = start_test_engine(
        "test-small-0", tmp_path_factory.mktemp("engine"), drain_grace_seconds=20
    )
    yield proc.ready
    code = proc.stop()
    assert code == 0, f"engine exited with {code}:\n{procs.tail(proc.log_path)}"


@pytest.fixture
async def channel(engine: dict[str, Any], operator_tls: Any) -> AsyncIterator[grpc.aio.Channel]:
    """To the shared engine, as an operator (engines take turns from Envoy and operators)."""
    async with tls_channel(engine["address"], operator_tls, CHANNEL_OPTIONS) as ch:
        yield ch


@pytest.fixture
def inference(channel: grpc.aio.Channel) -> inference_pb2_grpc.InferenceStub:
    return inference_pb2_grpc.InferenceStub(channel)


@pytest.fixture
def control(channel: grpc.aio.Channel) -> engine_pb2_grpc.EngineControlStub:
    return engine_pb2_grpc.EngineControlStub(channel)


@pytest.fixture(scope="session")
def idp(switchyard_home: Path) -> Any:
    """A test identity provider: its JWKS file (mesh.yaml's auth.jwt) and a token minter."""
    import time

    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = switchyard_home / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**public, "kid": "test-1", "alg": "RS256"}]}))
    os.environ["SWITCHYARD_TEST_JWKS"] = str(jwks)

    def token(**claims: Any) -> str:
        now = int(time.time())
        base = {"iss": "https://idp.switchyard.test", "aud": "switchyard", "exp": now + 300}
        return str(
            pyjwt.encode({**base, **claims}, key, algorithm="RS256", headers={"kid": "test-1"})
        )

    return token


@pytest.fixture(scope="session")
def collector() -> Iterator[OtlpCollector]:
    """Where every service of the test mesh, and Envoy, export their spans (OTLP/gRPC)."""
    with OtlpCollector() as c:
        yield c


def source_config(workdir: Path) -> Path:
    """tests/integration/mesh.yaml copied into `workdir` with its relative paths made absolute:
    the file the mesh's router watches, which a test may edit (test_model_routing)."""
    data = yaml.safe_load(MESH_CONFIG.read_text())
    here = MESH_CONFIG.parent
    data["safety"]["config"] = str((here / data["safety"]["config"]).resolve())
    for pool in data["pools"]:
        for group in pool.get("engines", []):
            group["config"] = str((here / group["config"]).resolve())
    path = workdir / "mesh-source.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def mesh(
    models_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    collector: OtlpCollector,
    idp: Any,
    redis_server: Any,
) -> Iterator[Mesh]:
    """The whole mesh (tests/integration/mesh.yaml): Envoy, router, safety, large x1 and
    small x2 engines (ENGINE_NICE steps nicer than the rest), an empty pool; supervised, so
    processes a test kills come back. Its quota ledger lives in a real Redis (as with several
    router replicas)."""
    workdir = tmp_path_factory.mktemp("mesh")
    m = Mesh(
        source_config(workdir),
        workdir=workdir,
        free_ports=True,
        say=lambda line: print(line, file=sys.stderr),
        otlp_endpoint=collector.endpoint,
        state_file=workdir / "up-state.json",
        keys_file=workdir / "keys.json",
        dev_key_file=workdir / "dev-key",
        redis_url=redis_server.url,
        # Three busy CPU engines on this 2-core machine otherwise starve the router's event
        # loop for seconds (past Envoy's per-message deadline) while the tests drive them.
        engine_nice=ENGINE_NICE,
    )
    try:
        m.start()
        yield m
    finally:
        m.stop()


class _Key(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Presents an API key on every call that does not carry one already."""

    def __init__(self, key: str) -> None:
        self._metadata = bearer(key)

    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        md = list(details.metadata or ())
        if not any(k == "authorization" for k, _ in md):
            md += self._metadata
        return await continuation(details._replace(metadata=tuple(md)), request)


def mesh_channel(mesh: Mesh, key: str | None = None) -> grpc.aio.Channel:
    """A client channel to the mesh (Envoy) presenting `key` (default: the development key)."""
    return grpc.aio.insecure_channel(
        mesh.endpoint,
        options=CHANNEL_OPTIONS,
        interceptors=[_Key(mesh.dev_key if key is None else key)],
    )


@pytest.fixture
async def envoy(mesh: Mesh) -> AsyncIterator[inference_pb2_grpc.InferenceStub]:
    """The mesh, as tenant "dev" (the development key `up` made)."""
    async with mesh_channel(mesh) as ch:
        yield inference_pb2_grpc.InferenceStub(ch)


@pytest.fixture
async def admin(mesh: Mesh) -> AsyncIterator[router_pb2_grpc.AdminStub]:
    """The router's admin API, as an operator."""
    async with tls_channel(mesh.router_address, mesh.operator_tls()) as ch:
        yield router_pb2_grpc.AdminStub(ch)


@pytest.fixture(scope="session")
async def tenant_keys(mesh: Mesh) -> dict[str, str]:
    """API keys of the tenants the tests speak for (tenant → key), made through the admin API."""
    from switchyard.v1 import router_pb2

    out = {}
    async with tls_channel(mesh.router_address, mesh.operator_tls()) as ch:
        stub = router_pb2_grpc.AdminStub(ch)
        for tenant in ("strict", *(f"tenant-{i}" for i in range(8))):
            r = await stub.CreateKey(router_pb2.CreateKeyRequest(tenant=tenant, name="tests"))
            out[tenant] = r.secret
    return out
