"""The autoscaler on one machine (issue 14 part 3): a mesh of its own with one small engine and
`autoscale.pools: {l4-small: 1..2}`; load raises the pool to 2 engines, the new engine takes
turns, idleness drains it back to 1 — with no turn failed."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.mesh.client import generate, make_request
from services.mesh.up import Mesh
from switchyard.v1 import inference_pb2, inference_pb2_grpc, router_pb2, router_pb2_grpc
from tests.integration.conftest import ROOT, mesh_channel

FR = inference_pb2.FinishReason


@pytest.fixture(scope="module")
def scaling_mesh(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    workdir = tmp_path_factory.mktemp("autoscale")
    config = {
        "router": {"listen": "127.0.0.1:0"},
        "envoy": {"node_id": "switchyard-autoscale-envoy", "ext_proc_timeout_seconds": 5},
        "safety": {"enabled": False},
        "saturation": {"capacity": {"cpu": 2}},  # two turns at once per engine
        "flow": {"max_queue": 64, "max_wait_seconds": 25, "burst": 0},
        "autoscale": {
            "queue_up": 1,
            "queue_down": 1,
            "utilization_down": 0.5,
            "down_stabilization_seconds": 5,
            "pools": {"l4-small": {"min_engines": 1, "max_engines": 2}},
        },
        "default_model": "small",
        "pools": [
            {
                "name": "l4-small",
                "accelerator": "cpu",
                "models": [{"name": "small", "tokenizer": "${SWITCHYARD_MODELS}/small"}],
                "engines": [
                    {"config": str(ROOT / "deploy" / "local" / "engine-small.yaml"), "count": 1}
                ],
            }
        ],
    }
    path = workdir / "mesh.source.yaml"
    path.write_text(yaml.safe_dump(config))
    m = Mesh(
        path,
        workdir=workdir,
        free_ports=True,
        say=lambda line: print(line, file=sys.stderr),
        tracing_enabled=False,
        state_file=workdir / "up-state.json",
        keys_file=workdir / "keys.json",
        dev_key_file=workdir / "dev-key",
    )
    try:
        m.start()
        yield m
    finally:
        m.stop()


async def pool_engines(mesh: Mesh) -> tuple[list[str], int]:
    """The pool's registered engines and its desired count, as the router says."""
    from services.common.tls import channel

    async with channel(mesh.router_address, mesh.operator_tls()) as ch:
        status = await router_pb2_grpc.AdminStub(ch).Status(router_pb2.StatusRequest())
    (pool,) = status.pools
    return [e.engine_id for e in pool.engines if e.state == "serving"], pool.desired_engines


async def test_load_adds_an_engine_and_idleness_drains_it(scaling_mesh: Mesh) -> None:
    mesh = scaling_mesh
    replies: list[Any] = []
    stop = asyncio.Event()

    async with mesh_channel(mesh) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)

        async def client(i: int) -> None:
            while not stop.is_set():
                req = make_request(f"Load {i}.", max_tokens=100, ignore_eos=True)
                replies.append(await generate(stub, req, timeout=300))

        # Four clients on a pool that runs two turns at once: turns wait → scale up.
        clients = [asyncio.create_task(client(i)) for i in range(4)]
        try:
            for _ in range(400):  # the new engine loads (40-120 s here)
                serving, desired = await pool_engines(mesh)
                if len(serving) == 2:
                    break
                assert all(not t.done() for t in clients), [t.exception() for t in clients]
                await asyncio.sleep(0.5)
            else:
                raise AssertionError(f"the pool never grew: {serving}, desired {desired}")
            assert desired == 2
            # The new engine takes turns.
            for _ in range(120):
                if any(r.final.served_by.engine == "l4-small-1" for r in replies):
                    break
                await asyncio.sleep(0.5)
            else:
                raise AssertionError("the new engine took no turn")
        finally:
            stop.set()
            await asyncio.gather(*clients)

        # Idle: back to one engine, drained.
        for _ in range(240):
            serving, desired = await pool_engines(mesh)
            if serving == ["l4-small-0"] and desired == 1:
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"the pool never shrank: {serving}, desired {desired}")
        # Still serving after the scale-down.
        after = await generate(stub, make_request("Still here?", max_tokens=4), timeout=60)
        replies.append(after)
    # No turn failed: every one ended with its whole length.
    assert replies and all(r.final.finish_reason == FR.FINISH_REASON_LENGTH for r in replies)
    child = mesh.supervisor.child("l4-small-1") if mesh.supervisor else None
    assert child is not None and child.state == "retired"  # the supervisor left it down


async def test_keda_reads_the_signal_over_its_external_scaler_protocol(scaling_mesh: Mesh) -> None:
    import grpc

    from services.common.pki import AUTOSCALER, ENGINE
    from services.common.tls import channel
    from switchyard.v1 import keda_external_scaler_pb2 as keda
    from switchyard.v1 import keda_external_scaler_pb2_grpc as keda_grpc

    mesh = scaling_mesh
    assert mesh.cfg is not None
    ref = keda.ScaledObjectRef(name="small", namespace="llm", scalerMetadata={"pool": "l4-small"})
    async with channel(mesh.router_address, mesh.cfg.tls.files(AUTOSCALER)) as ch:
        stub = keda_grpc.ExternalScalerStub(ch)
        assert (await stub.IsActive(ref)).result
        (spec,) = (await stub.GetMetricSpec(ref)).metricSpecs
        assert spec.metricName == "switchyard-desired-engines-l4-small"
        assert spec.targetSizeFloat == 1
        got = await stub.GetMetrics(keda.GetMetricsRequest(scaledObjectRef=ref))
        _, desired = await pool_engines(mesh)
        assert got.metricValues[0].metricValueFloat == desired == 1
        stream = stub.StreamIsActive(ref)
        assert (await stream.read()).result
        stream.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.IsActive(keda.ScaledObjectRef(scalerMetadata={"pool": "nope"}))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert "scalerMetadata.pool: 'nope' is not a pool" in e.value.details()
    # Only the autoscaler (and operator) identities may ask.
    async with channel(mesh.router_address, mesh.cfg.tls.files(ENGINE)) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await keda_grpc.ExternalScalerStub(ch).IsActive(ref)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
