"""Model versions through the real mesh (issue 13 part 1): a canary's share of sessions, every
turn of a session on one arm, a live weight change, and a failing canary rolled back.

The test mesh runs its two small engines as versions `stable` and `canary` of one config; these
tests give the router a `versions:` section by editing the config it watches (a live reload),
and put the file back after."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import yaml

from services.common.tls import channel as tls_channel
from services.mesh.client import generate, make_request
from services.mesh.status import format_status
from services.mesh.up import Mesh
from switchyard.v1 import inference_pb2_grpc, router_pb2, router_pb2_grpc
from tests.integration.conftest import frozen_cores
from tests.integration.test_mesh import metric_samples

TENANT = "dev"  # the development key's, which the `envoy` fixture presents
SESSIONS = [f"canary-test-{i:03d}" for i in range(200)]  # fixed: the split is deterministic


@contextlib.asynccontextmanager
async def versions(mesh: Mesh, admin: Any, section: dict[str, Any]) -> AsyncIterator[None]:
    """The mesh's router running with `versions: {small: section}`, applied by a live reload
    of the file it watches; the file as it was afterwards."""
    source = mesh.config_path
    original = source.read_text()
    data = yaml.safe_load(original)
    data["versions"] = {"small": section}
    source.write_text(yaml.safe_dump(data, sort_keys=False))
    await admin.ReloadConfig(router_pb2.ReloadConfigRequest())
    try:
        yield
    finally:
        source.write_text(original)
        await admin.ReloadConfig(router_pb2.ReloadConfigRequest())


@contextlib.asynccontextmanager
async def router_api(mesh: Mesh) -> AsyncIterator[router_pb2_grpc.RouterStub]:
    async with tls_channel(mesh.router_address, mesh.operator_tls()) as ch:
        yield router_pb2_grpc.RouterStub(ch)


async def arms(router: router_pb2_grpc.RouterStub, sessions: list[str]) -> dict[str, str]:
    """The arm each session is routed to (the router's own decision, explained, not taken)."""
    out = {}
    for s in sessions:
        req = make_request("Hi", model="small", max_tokens=2, session_id=s)
        got = await router.Pick(router_pb2.PickRequest(request=req, tenant=TENANT))
        out[s] = got.model_version
    return out


async def served_version(envoy: inference_pb2_grpc.InferenceStub, session: str) -> str:
    reply = await generate(
        envoy, make_request("Hi", model="small", max_tokens=2, session_id=session), timeout=60
    )
    return reply.final.served_by.model_version


async def test_a_canary_takes_its_share_of_sessions_and_a_session_stays_on_its_arm(
    mesh: Mesh,
    admin: Any,
    envoy: inference_pb2_grpc.InferenceStub,
) -> None:
    async with versions(mesh, admin, {"weights": {"stable": 90, "canary": 10}}):
        async with router_api(mesh) as router:
            split = await arms(router, SESSIONS)
            canary = [s for s in SESSIONS if split[s] == "canary"]
            share = len(canary) / len(SESSIONS)
            assert 0.06 <= share <= 0.14, f"{len(canary)} of 200 sessions on the canary"
            assert set(split.values()) == {"stable", "canary"}
            # Real turns, two per session: each lands on its session's arm.
            sample = canary[:6] + [s for s in SESSIONS if split[s] == "stable"][:6]
            for _ in range(2):
                got = await asyncio.gather(*(served_version(envoy, s) for s in sample))
                assert got == [split[s] for s in sample]

            # A live weight change: new sessions follow it; the canary's keep their arm.
            changed = await admin.SetVersionWeights(
                router_pb2.SetVersionWeightsRequest(model="small", weights={"canary": 50})
            )
            assert [a.weight for a in changed.model.arms] == [90, 50]
            after = await arms(router, SESSIONS)
            assert all(after[s] == "canary" for s in canary)
            moved = [s for s in SESSIONS if after[s] == "canary" and split[s] == "stable"]
            # 50 / (90 + 50) = 36 % of sessions
            assert 0.26 <= sum(v == "canary" for v in after.values()) / len(SESSIONS) <= 0.46
            assert await served_version(envoy, moved[0]) == "canary"


async def test_a_failing_canary_is_rolled_back(
    mesh: Mesh,
    admin: Any,
    envoy: inference_pb2_grpc.InferenceStub,
) -> None:
    section = {
        "weights": {"stable": 50, "canary": 50},
        "rollback": {"window_seconds": 300, "min_turns": 3, "max_failed_increase": 0.2},
    }
    async with versions(mesh, admin, section):
        async with router_api(mesh) as router:
            split = await arms(router, SESSIONS[:40])
        on_canary = [s for s, arm in split.items() if arm == "canary"][:4]
        on_stable = [s for s, arm in split.items() if arm == "stable"][:4]
        status = await admin.Status(router_pb2.StatusRequest())
        (engine_id,) = [
            e.engine_id for p in status.pools for e in p.engines if e.model_version == "canary"
        ]
        (canary_engine,) = [e for e in mesh.engines if e.name == engine_id]
        # The canary's vLLM core stalls: its turns are accepted and never get a token before
        # their deadline (failed turns); the stable arm serves its own.
        with frozen_cores([canary_engine.proc.pid]):

            async def stalled(session: str) -> None:
                req = make_request("Hi", model="small", max_tokens=2, session_id=session)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await generate(envoy, req, timeout=4)

            await asyncio.gather(
                *(stalled(s) for s in on_canary), *(served_version(envoy, s) for s in on_stable)
            )
            for _ in range(100):  # the engines' reports reach the router
                status = await admin.Status(router_pb2.StatusRequest())
                (small,) = status.versions
                canary = next(a for a in small.arms if a.version == "canary")
                if canary.rolled_back:
                    break
                await asyncio.sleep(0.1)
        assert canary.weight == 0 and canary.configured_weight == 50, canary
        assert canary.rolled_back.startswith("failed 100% of "), canary
        assert "ROLLED BACK: failed 100%" in format_status(status)
        rollbacks = metric_samples(
            mesh.router.metrics_url, "switchyard_router_version_rollbacks_total"
        )
        assert rollbacks[(("model", "small"), ("version", "canary"))] >= 1
        # The canary's sessions now go to the baseline.
        assert await served_version(envoy, on_canary[0]) == "stable"
