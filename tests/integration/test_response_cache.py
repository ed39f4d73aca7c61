"""The response cache through the real mesh (issue 13 part 4): a repeated deterministic turn is
answered from the cache with the same text and no engine tokens, over gRPC and HTTP; another
tenant misses; a sampled turn is never cached; a tenant opting out, and a purge."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from services.mesh.client import generate, make_request
from services.mesh.up import Mesh
from switchyard.v1 import inference_pb2, inference_pb2_grpc, router_pb2
from tests.integration.conftest import mesh_channel
from tests.integration.test_mesh import metric_samples
from tests.integration.test_openai_http import client


async def ask(stub: inference_pb2_grpc.InferenceStub, req: inference_pb2.GenerateRequest) -> Any:
    return await generate(stub, req, timeout=60)


async def until_cached(
    stub: inference_pb2_grpc.InferenceStub, req: Any, misses: list[Any] | None = None
) -> Any:
    """Ask again until the answer comes from the cache (the safety filter stores a turn in the
    background once it has ended); the engine's answers meanwhile go to `misses`."""
    for _ in range(50):
        reply = await ask(stub, req)
        if reply.final.cached:
            return reply
        if misses is not None:
            misses.append(reply)
        await asyncio.sleep(0.1)
    raise AssertionError("the repeated deterministic turn was never answered from the cache")


def deterministic(prompt: str, **kw: Any) -> inference_pb2.GenerateRequest:
    return make_request(prompt, model="small", max_tokens=12, temperature=0, **kw)


async def test_a_repeated_deterministic_turn_is_answered_from_the_cache(
    mesh: Mesh, envoy: inference_pb2_grpc.InferenceStub, tenant_keys: dict[str, str]
) -> None:
    assert mesh.router is not None
    req = deterministic(f"Cache me {uuid.uuid4().hex[:8]}")
    first = await ask(envoy, req)
    assert not first.final.cached and first.final.usage.completion_tokens > 0
    misses = [first]
    hit = await until_cached(envoy, req, misses)
    # The text of one of the engine's answers (the first stored stays; greedy decoding of this
    # tiny random model may differ between batches, so not always the first asked). Its deltas
    # are replayed as stored; the safety filter on the way out may join some, as for any turn.
    assert any(hit.text == m.text for m in misses), (hit.text, [m.text for m in misses])
    again = await ask(envoy, req)
    assert again.final.cached and again.text == hit.text
    final = hit.final
    assert final.usage.completion_tokens == 0 and final.usage.prompt_tokens == 0
    assert final.served_by.model == "small" and final.finish_reason == first.final.finish_reason
    assert final.served_by.model_version == first.final.served_by.model_version
    assert final.HasField("safety")  # the safety filter saw the replay too
    assert hit.trace_id  # and it was traced
    lookups = metric_samples(
        mesh.router.metrics_url, "switchyard_router_response_cache_lookups_total"
    )
    assert lookups[(("result", "hit"),)] >= 1

    # Another tenant asking the same misses: answers are the tenant's own.
    async with mesh_channel(mesh, tenant_keys["tenant-0"]) as ch:
        other = await ask(inference_pb2_grpc.InferenceStub(ch), req)
    assert not other.final.cached and other.final.usage.completion_tokens > 0

    # A sampled turn is never cached.
    sampled = make_request(f"Sample me {uuid.uuid4().hex[:8]}", model="small", max_tokens=4)
    sampled.sampling.temperature = 0.9
    for _ in range(3):
        reply = await ask(envoy, sampled)
        assert not reply.final.cached
        await asyncio.sleep(0.2)


async def test_http_clients_get_cached_answers_too(mesh: Mesh) -> None:
    prompt = f"Cache me over HTTP {uuid.uuid4().hex[:8]}"
    async with client(mesh) as c:
        first = await c.completions.create(
            model="small", prompt=prompt, max_tokens=12, temperature=0
        )
        assert first.usage is not None and first.usage.completion_tokens > 0
        for _ in range(50):
            again = await c.completions.create(
                model="small", prompt=prompt, max_tokens=12, temperature=0
            )
            assert again.usage is not None
            if again.usage.completion_tokens == 0:  # answered by the cache: no engine tokens
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("never answered from the cache")
        assert again.choices[0].text == first.choices[0].text
        stream = await c.completions.create(
            model="small", prompt=prompt, max_tokens=12, temperature=0, stream=True
        )
        streamed = "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])
        assert streamed == first.choices[0].text


async def test_a_tenant_may_opt_out_and_answers_can_be_purged(
    mesh: Mesh, admin: Any, tenant_keys: dict[str, str]
) -> None:
    async with mesh_channel(mesh, tenant_keys["tenant-1"]) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        req = deterministic(f"Purge me {uuid.uuid4().hex[:8]}")
        await ask(stub, req)
        await until_cached(stub, req)
        got = await admin.PurgeCache(router_pb2.PurgeCacheRequest(tenant="tenant-1"))
        assert got.purged >= 1
        assert not (await ask(stub, req)).final.cached  # gone: the engine answers again

        await admin.SetTenant(
            router_pb2.SetTenantRequest(
                tenant="tenant-1",
                update=["response_cache"],
                policy=router_pb2.TenantPolicy(response_cache=False),
            )
        )
        try:
            opted_out = deterministic(f"Never cache me {uuid.uuid4().hex[:8]}")
            for _ in range(3):
                assert not (await ask(stub, opted_out)).final.cached
                await asyncio.sleep(0.2)
        finally:
            await admin.SetTenant(router_pb2.SetTenantRequest(tenant="tenant-1", reset=True))
