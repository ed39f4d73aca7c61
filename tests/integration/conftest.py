"""One real vLLM engine (`switchyard engine`, a separate process) shared by the whole session.

Set SWITCHYARD_TEST_ENGINE_READY=/path/to/ready.json to reuse an engine you started yourself
(`switchyard engine --config deploy/local/engine-small.yaml --ready-file ...`) while iterating.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.mesh import procs
from services.mesh.client import CHANNEL_OPTIONS
from services.mesh.models import default_models_dir, init_models
from switchyard.v1 import engine_pb2_grpc, inference_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
SMALL_CONFIG = ROOT / "deploy" / "local" / "engine-small.yaml"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    path = default_models_dir()
    init_models(
        path, ["small", "large"], progress=lambda m: print(f"[models] {m}", file=sys.stderr)
    )
    os.environ["SWITCHYARD_MODELS"] = str(path)
    return path


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
async def channel(engine: dict[str, Any]) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(engine["address"], options=CHANNEL_OPTIONS) as ch:
        yield ch


@pytest.fixture
def inference(channel: grpc.aio.Channel) -> inference_pb2_grpc.InferenceStub:
    return inference_pb2_grpc.InferenceStub(channel)


@pytest.fixture
def control(channel: grpc.aio.Channel) -> engine_pb2_grpc.EngineControlStub:
    return engine_pb2_grpc.EngineControlStub(channel)
