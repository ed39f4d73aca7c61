"""Tenants on the shared mesh (its quota ledger in a real Redis): quotas reserved at admission
never overspend, settle from the engines' usage reports, hold across router replicas; each
tenant's prompts have their own prefix cache."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from google.rpc import error_details_pb2, status_pb2

from services.common import headers as h
from services.common.frames import encode_frame
from services.common.pki import ENVOY
from services.common.tls import TlsConfig
from services.common.tls import channel as tls_channel
from services.mesh import procs
from services.mesh.client import generate, make_request
from services.mesh.up import Mesh
from switchyard.v1 import inference_pb2, inference_pb2_grpc, router_pb2
from tests.integration.conftest import mesh_channel
from tests.integration.test_engine import long_text

pytestmark = pytest.mark.integration

SMALL = "small"


async def tenant_with(admin: Any, **quotas: int) -> tuple[str, str]:
    """A fresh tenant with these quotas, and an API key for it."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    if quotas:
        await admin.SetTenant(
            router_pb2.SetTenantRequest(
                tenant=tenant,
                update=[f"quotas.{k}" for k in quotas],
                policy=router_pb2.TenantPolicy(quotas=router_pb2.Quotas(**quotas)),
            )
        )
    key = await admin.CreateKey(router_pb2.CreateKeyRequest(tenant=tenant, name="tenancy"))
    return tenant, key.secret


async def tenant_status(admin: Any, tenant: str) -> router_pb2.TenantStatus:
    listed = await admin.ListTenants(router_pb2.ListTenantsRequest())
    [got] = [t for t in listed.tenants if t.policy.tenant == tenant]
    return got


async def settled(admin: Any, tenant: str, timeout: float = 30) -> router_pb2.TenantStatus:
    """The tenant's status once none of its turns is in flight (their usage reported)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        st = await tenant_status(admin, tenant)
        if st.in_flight == 0 or asyncio.get_running_loop().time() > deadline:
            return st
        await asyncio.sleep(0.1)


def retry_delay(e: grpc.aio.AioRpcError) -> float:
    """The RetryInfo delay in a refused call's status details (google.rpc.Status)."""
    raw = dict(e.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw, f"no status details in {e.trailing_metadata()}"
    status = status_pb2.Status.FromString(raw)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info = error_details_pb2.RetryInfo()
    assert status.details and status.details[0].Unpack(info)
    return info.retry_delay.ToTimedelta().total_seconds()


async def test_twenty_concurrent_streams_never_overspend_a_budget_and_refunds_restore_it(
    mesh: Mesh, admin: Any
) -> None:
    tenant, key = await tenant_with(admin, tokens_per_day=1000)
    outcomes: list[Any] = []

    async def one(ch: grpc.aio.Channel) -> None:
        call = inference_pb2_grpc.InferenceStub(ch).Generate(
            make_request("Say ok.", model=SMALL, max_tokens=100, regex="ok")
        )
        try:
            md = dict(await call.initial_metadata() or ())
            final = [m async for m in call][-1].final
            outcomes.append(("served", final.usage, md.get(h.QUOTA_REMAINING, "")))
        except grpc.aio.AioRpcError as e:
            outcomes.append(("refused", e, ""))

    async with mesh_channel(mesh, key) as ch:
        await asyncio.gather(*(one(ch) for _ in range(20)))
    served = [o for o in outcomes if o[0] == "served"]
    refused = [o[1] for o in outcomes if o[0] == "refused"]
    # Each turn reserves its prompt + 100: at most 1000 // (prompt + 100) of them at once.
    prompt = served[0][1].prompt_tokens
    assert 0 < len(served) <= 1000 // (prompt + 100) < 20
    assert len(served) + len(refused) == 20
    for e in refused:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
        assert f"tenant {tenant} is over its tokens_per_day quota (1000)" in e.details()
        assert retry_delay(e) > 0
    assert all(o[2].startswith("tokens_per_day=") for o in served)
    # Every turn used a few tokens of its 100: the rest came back.
    used = sum(u.prompt_tokens + u.completion_tokens for _, u, _ in served)
    st = await settled(admin, tenant)
    assert st.in_flight == 0 and st.over_quota == len(refused)
    assert st.tokens == used
    left = st.remaining["tokens_per_day"]
    assert 1000 - used - 1 <= left <= 1000 - used  # (a day's refill: < 0.02 token/s)
    async with mesh_channel(mesh, key) as ch:  # and the budget serves again
        reply = await generate(
            inference_pb2_grpc.InferenceStub(ch),
            make_request("Say ok.", model=SMALL, max_tokens=100, regex="ok"),
        )
    assert reply.final.usage.completion_tokens > 0


async def test_a_turn_larger_than_the_whole_limit_is_told_so_without_a_retry(
    mesh: Mesh, admin: Any
) -> None:
    _, key = await tenant_with(admin, tokens_per_minute=50)
    async with mesh_channel(mesh, key) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await generate(
                inference_pb2_grpc.InferenceStub(ch), make_request("hi", model=SMALL, max_tokens=60)
            )
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (
        "more than tenant" in e.value.details() and "lower sampling.max_tokens" in e.value.details()
    )
    assert "grpc-status-details-bin" not in dict(e.value.trailing_metadata() or ())


async def test_a_cancelled_stream_gives_back_what_it_did_not_generate(
    mesh: Mesh, admin: Any
) -> None:
    tenant, key = await tenant_with(admin, tokens_per_day=5000, concurrent_streams=1)
    async with mesh_channel(mesh, key) as ch:
        call = inference_pb2_grpc.InferenceStub(ch).Generate(
            make_request(long_text(20), model=SMALL, max_tokens=1500, ignore_eos=True)
        )
        first = await call.read()
        assert first.HasField("delta")
        call.cancel()
    st = await settled(admin, tenant)
    assert st.in_flight == 0
    # Charged what it prefilled and generated before the cancel, far from its 1,500 + prompt.
    assert 0 < st.tokens < 1000
    assert st.remaining["tokens_per_day"] >= 5000 - st.tokens - 1
    assert st.remaining["concurrent_streams"] == 1  # its stream came back


async def test_concurrent_streams_are_a_quota(mesh: Mesh, admin: Any) -> None:
    _, key = await tenant_with(admin, concurrent_streams=1)
    async with mesh_channel(mesh, key) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        call = stub.Generate(
            make_request(long_text(20), model=SMALL, max_tokens=400, ignore_eos=True)
        )
        assert (await call.read()).HasField("delta")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await generate(stub, make_request("hi", model=SMALL, max_tokens=2))
        call.cancel()
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "concurrent_streams" in e.value.details()


# -- one budget across router replicas ------------------------------------------------------


async def _ext_proc_turn(address: str, key: str, req: inference_pb2.GenerateRequest) -> Any:
    """One turn's ext_proc exchange with a router, as Envoy has it: headers, then the body."""
    hdrs = {":path": "/switchyard.v1.Inference/Generate", "authorization": f"Bearer {key}"}

    async def messages():  # type: ignore[no-untyped-def]
        yield ext.ProcessingRequest(
            request_headers=ext.HttpHeaders(
                headers=base_pb2.HeaderMap(
                    headers=[
                        base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in hdrs.items()
                    ]
                )
            )
        )
        yield ext.ProcessingRequest(
            request_body=ext.HttpBody(
                body=encode_frame(req.SerializeToString()), end_of_stream=True
            )
        )

    tls = TlsConfig.model_validate({}).files(ENVOY)
    async with tls_channel(address, tls) as ch:
        answers = [a async for a in ext_grpc.ExternalProcessorStub(ch).Process(messages())]
    return answers[-1]


@pytest.fixture(scope="module")
def second_router(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Another replica of the router: the same config (keys, tenants, the Redis ledger), its
    own port; no engine registers with it."""
    workdir = tmp_path_factory.mktemp("router-2")
    cfg = yaml.safe_load((mesh.workdir / "mesh.yaml").read_text())
    cfg["router"]["listen"] = "127.0.0.1:0"
    cfg["router"]["registration_grace_seconds"] = 0
    path = Path(workdir) / "mesh.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = procs.start_service(["router", "--config", str(path)], name="router-2", workdir=workdir)
    proc.wait_ready(timeout=120)
    yield proc
    proc.stop()


async def test_two_router_replicas_sharing_redis_enforce_one_budget(
    mesh: Mesh, admin: Any, second_router: Any
) -> None:
    tenant, key = await tenant_with(admin, tokens_per_day=1000)
    long = make_request("Count.", model=SMALL, max_tokens=200, ignore_eos=True)
    async with mesh_channel(mesh, key) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        calls = [stub.Generate(long) for _ in range(4)]  # through replica 1: ~4 x 205 reserved
        for c in calls:
            assert (await c.read()).HasField("delta")
        # Replica 2 sees the same budget: 200 more do not fit, 100 more do.
        over = await _ext_proc_turn(second_router.address, key, long)
        assert (
            over.immediate_response.grpc_status.status
            == (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        ), over
        assert (
            f"tenant {tenant} is over its tokens_per_day quota"
            in over.immediate_response.body.decode()
        )
        fits = make_request("Count.", model=SMALL, max_tokens=100)
        answer = await _ext_proc_turn(second_router.address, key, fits)
        # Admitted, then no engine to route to on this replica (its reservation released).
        assert answer.immediate_response.grpc_status.status == grpc.StatusCode.UNAVAILABLE.value[0]
        for c in calls:
            c.cancel()
    await settled(admin, tenant)
    again = await _ext_proc_turn(second_router.address, key, long)
    assert again.immediate_response.grpc_status.status == grpc.StatusCode.UNAVAILABLE.value[0]


# -- isolation ------------------------------------------------------------------------------


async def test_a_tenant_never_hits_another_tenants_prefix_cache(mesh: Mesh, admin: Any) -> None:
    _, key_a = await tenant_with(admin)
    _, key_b = await tenant_with(admin)
    prompt = long_text(400)  # several KV blocks

    async def cached(key: str) -> int:
        async with mesh_channel(mesh, key) as ch:
            reply = await generate(
                inference_pb2_grpc.InferenceStub(ch),
                make_request(prompt, model=SMALL, max_tokens=1),
            )
        return reply.final.usage.cached_prompt_tokens

    assert await cached(key_a) == 0
    assert await cached(key_b) == 0  # the same prompt, another tenant: none of A's blocks
    assert await cached(key_a) > 0  # A again: its own cache (the router knows where it is)
