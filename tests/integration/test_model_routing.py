"""Model routing on the running mesh: the tiered name "auto" sends each turn to the cheapest
model able to serve it (tests/integration/mesh.yaml: small handles easy turns, large any), and
the Final names the tier and why; over HTTP as over gRPC."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import yaml

from services.mesh.client import generate, make_request
from services.mesh.up import Mesh
from services.router.tiers import ComplexitySection, Scorer
from switchyard.v1 import inference_pb2_grpc
from tests.integration.test_openai_http import client

pytestmark = pytest.mark.integration

LABELLED = Path(__file__).parents[2] / "benchmarks" / "data" / "complexity_labelled.yaml"


async def test_auto_sends_each_labelled_prompt_to_the_tier_its_score_says(
    envoy: inference_pb2_grpc.InferenceStub,
) -> None:
    scorer = Scorer(ComplexitySection.model_validate({}))  # the mesh's rules (the defaults)
    data = yaml.safe_load(LABELLED.read_text())
    served: dict[str, list[str]] = {"easy": [], "hard": []}
    for label, prompts in data.items():
        for prompt in prompts:
            reply = await generate(envoy, make_request(prompt, model="auto", max_tokens=1))
            sb = reply.final.served_by
            assert sb.routed_as == "auto", sb
            hard = scorer.is_hard(scorer.score(prompt))
            assert sb.route_reason.startswith("hard " if hard else "easy "), sb
            if hard:
                assert sb.model == "large", sb  # the small model handles easy turns only
            elif sb.model == "large":  # an easy turn goes there only when small has no room
                assert "cheaper able pools full (l4-small)" in sb.route_reason, sb
            served[label].append(sb.model)
    # The labelled set's intended tiers (see tests/unit/test_tiers.py for the scorer's misses).
    assert served["easy"].count("small") >= 28, served
    assert served["hard"].count("large") >= 29, served


async def test_auto_over_http_is_listed_and_answers_with_the_model_it_chose(mesh: Mesh) -> None:
    async with client(mesh) as c:
        listed = {m.id async for m in c.models.list()}
        assert {"auto", "small", "large"} <= listed
        easy = await c.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "Hi!"}], max_tokens=2
        )
        hard = await c.chat.completions.create(
            model="auto",
            messages=[
                {"role": "user", "content": "Prove that the square root of 2 is irrational."}
            ],
            max_tokens=2,
        )
    assert easy.model == "small" and hard.model == "large"


async def test_a_tiered_name_is_not_a_way_around_the_callers_models(mesh: Mesh, admin) -> None:  # type: ignore[no-untyped-def]
    from switchyard.v1 import router_pb2

    key = await admin.CreateKey(
        router_pb2.CreateKeyRequest(tenant="small-only", name="tiers", models=["small"])
    )
    async with client(mesh, key.secret) as c:
        ok = await c.completions.create(model="auto", prompt="Hello there", max_tokens=2)
        assert ok.model == "small"
        with pytest.raises(openai.PermissionDeniedError, match="cannot handle hard turns"):
            await c.completions.create(
                model="auto", prompt="Write a Python function to sort a list.", max_tokens=2
            )


async def test_a_saturated_large_pool_degrades_free_turns_and_premium_waits(
    mesh: Mesh,
    admin,  # type: ignore[no-untyped-def]
) -> None:
    import asyncio
    import contextlib
    import uuid

    import grpc

    from switchyard.v1 import router_pb2
    from tests.integration.conftest import mesh_channel
    from tests.integration.test_tenancy import HOLD_TOKENS, frozen_generation, tenant_status

    def key(tier: str):  # type: ignore[no-untyped-def]
        name = f"{tier}-{uuid.uuid4().hex[:6]}"
        return admin.CreateKey(router_pb2.CreateKeyRequest(tenant=name, tier=tier))

    holder, free, premium = await key("standard"), await key("free"), await key("premium")

    async def large_pool() -> router_pb2.PoolStatus:
        status = await admin.Status(router_pb2.StatusRequest())
        return next(p for p in status.pools if p.name == "h100-large")

    async def hold(stub: inference_pb2_grpc.InferenceStub) -> None:
        call = stub.Generate(make_request("Count.", model="large", max_tokens=HOLD_TOKENS,
                                          ignore_eos=True))  # fmt: skip
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for _ in call:
                pass

    async with (
        mesh_channel(mesh, holder.secret) as h,
        mesh_channel(mesh, free.secret) as f,
        mesh_channel(mesh, premium.secret) as p,
    ):
        capacity = (await large_pool()).capacity
        holders = [asyncio.create_task(hold(inference_pb2_grpc.InferenceStub(h)))
                   for _ in range(capacity)]  # fmt: skip
        try:
            for _ in range(600):  # the router has let them all into the pool
                if (await large_pool()).in_flight >= capacity:
                    break
                await asyncio.sleep(0.1)
            with frozen_generation(mesh, "h100-large"):  # none of them ends meanwhile
                # A free turn does not wait for the saturated large model: the small one serves.
                reply = await generate(
                    inference_pb2_grpc.InferenceStub(f),
                    make_request("Hi", model="reasoning", max_tokens=2),  # an alias of large
                    timeout=60,
                )
                sb = reply.final.served_by
                assert sb.model == "small", sb
                assert sb.degraded_reason == (
                    "large (pool h100-large) is saturated; tier free degrades"
                ), sb
                # A premium turn waits for the large model.
                waiting = asyncio.create_task(
                    generate(
                        inference_pb2_grpc.InferenceStub(p),
                        make_request("Hi", model="large", max_tokens=2),
                        timeout=120,
                    )
                )
                for _ in range(300):
                    if (await tenant_status(admin, premium.key.tenant)).queued == 1:
                        break
                    assert not waiting.done(), waiting
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("the premium turn never waited for the large pool")
            holders.pop().cancel()  # a slot frees: the premium turn takes it
            sb = (await waiting).final.served_by
            assert sb.model == "large" and not sb.degraded_reason, sb
        finally:
            for t in holders:
                t.cancel()
            await asyncio.gather(*holders, return_exceptions=True)


async def test_a_config_reload_adds_an_alias_and_a_tier_with_turns_in_flight(
    mesh: Mesh,
    admin,  # type: ignore[no-untyped-def]
    envoy: inference_pb2_grpc.InferenceStub,
) -> None:
    import asyncio

    import grpc

    from switchyard.v1 import router_pb2

    source = mesh.config_path  # the file the router watches (a copy: see conftest)
    original = source.read_text()
    data = yaml.safe_load(original)
    in_flight = [
        asyncio.create_task(
            generate(envoy, make_request(f"Count {i}.", max_tokens=200, ignore_eos=True))
        )
        for i in range(4)
    ]
    try:
        await asyncio.sleep(0.5)
        data["aliases"]["quick"] = "small"
        data["tiers"]["budget"] = ["small", "large"]
        source.write_text(yaml.safe_dump(data, sort_keys=False))
        got = await admin.ReloadConfig(router_pb2.ReloadConfigRequest())
        assert got.source == str(source)  # (the router's own watch may have applied it first)
        reply = await generate(envoy, make_request("Hi", model="quick", max_tokens=2))
        assert reply.final.served_by.model == "small"
        reply = await generate(envoy, make_request("Hi", model="budget", max_tokens=2))
        assert reply.final.served_by.routed_as == "budget"
        # An invalid file is refused naming the field; the running config stays.
        data["aliases"]["broken"] = "no-such-model"
        source.write_text(yaml.safe_dump(data, sort_keys=False))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await admin.ReloadConfig(router_pb2.ReloadConfigRequest())
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "aliases.broken: 'no-such-model' is not a model of any pool" in e.value.details()
        reply = await generate(envoy, make_request("Hi", model="quick", max_tokens=2))
        assert reply.final.served_by.model == "small"
        # A change that needs a restart is refused whole, naming it.
        del data["aliases"]["broken"]
        data["aliases"]["later"] = "large"
        data["router"]["stale_after_seconds"] = 9
        source.write_text(yaml.safe_dump(data, sort_keys=False))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await admin.ReloadConfig(router_pb2.ReloadConfigRequest())
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "changes router, which need a restart" in e.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await generate(envoy, make_request("Hi", model="later", max_tokens=2))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND  # not applied
        del data["router"]["stale_after_seconds"]

        # Pools are live: one added reaches Envoy over xDS (its cluster, its route) and its
        # model routes (no engine yet: UNAVAILABLE saying so); removed, it goes again. A pool
        # with engines registered is not removed.
        data["pools"].append(
            {
                "name": "live-pool",
                "accelerator": "cpu",
                "models": [{"name": "live-model", "tokenizer": "${SWITCHYARD_MODELS}/small"}],
            }
        )
        source.write_text(yaml.safe_dump(data, sort_keys=False))
        got = await admin.ReloadConfig(router_pb2.ReloadConfigRequest())
        assert "pools.live-pool added" in got.changed or not got.changed  # (or the watch did)
        for _ in range(100):
            if "pool_live-pool" in clusters(mesh):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("Envoy never got the new pool's cluster")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await generate(envoy, make_request("Hi", model="live-model", max_tokens=2))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
        assert "live-pool" in e.value.details()
        without_small = {
            **data,
            "pools": [p for p in data["pools"] if p["name"] != "l4-small"],
            "default_model": "large",
            "aliases": {"reasoning": "large"},
            "tiers": {},
            "fallbacks": {},
        }
        source.write_text(yaml.safe_dump(without_small, sort_keys=False))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await admin.ReloadConfig(router_pb2.ReloadConfigRequest())
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "l4-small still have engines registered" in e.value.details()
    finally:
        source.write_text(original)
        await admin.ReloadConfig(router_pb2.ReloadConfigRequest())
    for turn in await asyncio.gather(*in_flight):  # none of the turns in flight failed
        assert turn.final.usage.completion_tokens == 200
    for _ in range(100):  # the added pool is gone again
        if "pool_live-pool" not in clusters(mesh):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("Envoy kept the removed pool's cluster")


def clusters(mesh: Mesh) -> set[str]:
    from tests.integration.test_mesh import admin_json

    return {c["name"] for c in admin_json(mesh, "/clusters?format=json")["cluster_statuses"]}
