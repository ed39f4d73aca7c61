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
    assert served["hard"].count("large") >= 23, served


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
