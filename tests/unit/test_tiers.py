"""Cost tiers (services/router/tiers.py): the complexity scorer, the choice of the cheapest able
model with room, the config's checks, and the scorer on the project's labelled prompts."""

from pathlib import Path

import pytest
import yaml

from services.common.config import parse_config
from services.common.errors import PermissionDenied
from services.router.config import MeshConfig, ModelResolver, tier_selector
from services.router.registry import Registry
from services.router.routing import Limits, RoutingService
from services.router.scheduling.scheduler import Scheduler
from services.router.sessions import SessionTable
from services.router.testing import make_info, make_load
from services.router.tiers import ComplexitySection, Scorer
from switchyard.v1 import inference_pb2 as pb
from tests.unit.test_router_routing import Tokenizers

LABELLED = Path(__file__).parents[2] / "benchmarks" / "data" / "complexity_labelled.yaml"


def mesh(**extra):  # type: ignore[no-untyped-def]
    return parse_config(
        {
            "pools": [
                {
                    "name": "h100-large",
                    "accelerator": "h100",
                    "cost": {"usd_per_million_tokens": 8.0},
                    "models": [{"name": "large", "tokenizer": "/t"}],
                },
                {
                    "name": "l4-small",
                    "accelerator": "l4",
                    "cost": {"usd_per_hour": 0.72, "tokens_per_second": 200},  # $1/M tokens
                    "models": [{"name": "small", "tokenizer": "/t", "handles": "easy"}],
                },
            ],
            "tiers": {"auto": ["large", "small"]},
            **extra,
        },
        MeshConfig,
    )


def scorer() -> Scorer:
    return Scorer(ComplexitySection.model_validate({}))


EASY = pb.GenerateRequest(prompt="What is the capital of Australia?")
HARD = pb.GenerateRequest(prompt="Write a Python function that reverses a linked list.")


def test_the_scorer_reads_length_depth_and_cues():
    s = scorer()
    assert not s.is_hard(s.score("Suggest a name for a puppy."))
    code = s.score("Fix this bug: def f(x): return x +")
    assert s.is_hard(code) and "code" in code.parts
    assert "math" in s.score("Prove that 2^10 = 1024").parts
    long = s.score("word " * 400)
    assert long.parts["length"] == pytest.approx(0.3)  # 2,000 characters: the full weight
    assert s.score("ok", user_turns=8).parts["depth"] == pytest.approx(0.15)
    assert s.score("x" * 10_000 + " prove the theorem step by step, compare").value <= 1.0


def test_an_easy_turn_goes_to_the_cheapest_pool_with_room_and_a_hard_one_to_a_model_able():
    tiers = tier_selector(mesh())
    room = {"l4-small": 3, "h100-large": 5}
    tiers.room = room.get
    easy = tiers.choose("auto", EASY)
    assert (easy.model, easy.pool, easy.hard) == ("small", "l4-small", False)
    assert easy.routed_as == "auto" and easy.reason.startswith("easy 0.")
    hard = tiers.choose("auto", HARD)
    assert (hard.model, hard.hard) == ("large", True)  # small "handles: easy" only
    room["l4-small"] = 0  # the small pool is full: an easy turn does not wait for it
    spilled = tiers.choose("auto", EASY)
    assert spilled.model == "large" and "cheaper able pools full (l4-small)" in spilled.reason
    room["h100-large"] = 0  # both full: the cheapest able, where it waits its turn
    assert tiers.choose("auto", EASY).model == "small"


def test_a_tier_only_chooses_models_the_caller_may_use():
    tiers = tier_selector(mesh())
    tiers.room = lambda pool: 1
    assert tiers.choose("auto", EASY, allowed={"large"}).model == "large"
    with pytest.raises(PermissionDenied, match="cannot handle hard turns"):
        tiers.choose("auto", HARD, allowed={"small"})
    with pytest.raises(PermissionDenied, match="may use none of them"):
        tiers.choose("auto", EASY, allowed={"medium"})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tiers": {"small": ["large"]}}, "tiers.small: a tiered name may not shadow"),
        ({"tiers": {"auto": ["huge"]}}, "tiers.auto: 'huge' is not a model of any pool"),
        ({"tiers": {"auto": ["small"]}}, "tiers.auto: none of its models handles hard turns"),
        ({"tiers": {"auto": []}}, "tiers.auto: name at least one model"),
        (
            {"complexity": {"cues": {"code": {"weight": 0.5, "patterns": ["("]}}}},
            "pattern '\\(' is not a regular expression",
        ),
    ],
)
def test_a_bad_tier_config_is_refused_naming_the_field(extra, message):  # type: ignore[no-untyped-def]
    with pytest.raises(Exception, match=message):
        mesh(**extra)


def test_a_pools_cost_is_given_one_way():
    with pytest.raises(Exception, match="usd_per_hour and tokens_per_second go together"):
        parse_config(
            {
                "pools": [
                    {
                        "name": "p",
                        "accelerator": "cpu",
                        "cost": {"usd_per_hour": 1.0},
                        "models": [{"name": "m", "tokenizer": "/t"}],
                    }
                ]
            },
            MeshConfig,
        )


async def test_routing_names_the_tier_and_why_and_leaves_other_names_alone():
    cfg = mesh()
    reg = Registry()
    for i, (pool, model) in enumerate([("h100-large", "large"), ("l4-small", "small")]):
        info = make_info(f"e{i}", max_model_len=512, max_tokens_limit=64)
        info.pool, info.model = pool, model
        reg.register(info, f"10.1.0.{i + 1}:8000")
        reg.on_load(f"e{i}", make_load(f"e{i}"))
    tiers = tier_selector(cfg)
    tiers.room = lambda pool: 4
    routing = RoutingService(
        ModelResolver(cfg), Tokenizers(), Scheduler(reg, reg.index, SessionTable()), reg,
        Limits(), tiers,
    )  # fmt: skip
    auto = pb.GenerateRequest(prompt="Hi there!", model="auto")
    decision, rr = await routing.route(auto)
    assert (rr.model, rr.pool, rr.routed_as) == ("small", "l4-small", "auto")
    assert decision.engine.engine_id == "e1" and "cheapest able with room" in rr.route_reason
    _, rr = await routing.route(pb.GenerateRequest(prompt=HARD.prompt, model="auto"))
    assert rr.model == "large" and rr.routed_as == "auto"
    _, rr = await routing.route(pb.GenerateRequest(prompt=HARD.prompt))  # "": the default model
    assert rr.model == "large" and rr.routed_as == ""  # (the first pool's here)
    _, rr = await routing.route(pb.GenerateRequest(prompt="Hi", model="small"))
    assert rr.model == "small" and rr.routed_as == "" and rr.route_reason == ""


def test_the_scorer_on_the_labelled_prompts():
    """The project's labelled set (benchmarks/data/complexity_labelled.yaml), held out: the
    rules are tuned on the development set (complexity_dev.yaml) only. 59 of its 60 prompts
    (98 %; goal 90 %) get their intended tier with the default rules, every easy one among them
    (an easy prompt never goes to the large pool); the miss is a hard word problem with no
    cue's vocabulary (two trains, speeds and times)."""
    s = scorer()
    data = yaml.safe_load(LABELLED.read_text())
    right = {label: sum(s.is_hard(s.score(p)) == (label == "hard") for p in prompts)
             for label, prompts in data.items()}  # fmt: skip
    assert len(data["easy"]) == len(data["hard"]) == 30
    assert right["easy"] == 30
    assert right["easy"] + right["hard"] >= 59, right


def test_the_scorer_on_its_development_set():
    """What the rules were tuned on (benchmarks/data/complexity_dev.yaml, 40 easy, 40 hard)."""
    s = scorer()
    data = yaml.safe_load((LABELLED.parent / "complexity_dev.yaml").read_text())
    wrong = [p for label, prompts in data.items() for p in prompts
             if s.is_hard(s.score(p)) != (label == "hard")]  # fmt: skip
    assert wrong == []


# -- graceful degradation (services/router/fallback.py) --------------------------------------


def principal(tier: str, models: frozenset[str] = frozenset()):  # type: ignore[no-untyped-def]
    from services.router.auth.principal import Principal

    return Principal(tenant="acme", tier=tier, priority=0, models=models)


def test_a_saturated_model_degrades_to_its_fallback_for_tiers_that_degrade():
    from services.router.config import fallbacks
    from services.router.fallback import Degraded

    fb = fallbacks(mesh(fallbacks={"large": "small"}))
    room = {"h100-large": 0, "l4-small": 2}
    fb.room = room.get
    got = fb.choose("large", "h100-large", principal("free"))
    assert isinstance(got, Degraded) and (got.model, got.pool) == ("small", "l4-small")
    assert got.reason == "large (pool h100-large) is saturated; tier free degrades"
    # Premium waits for its model (and is told why no fallback took it, should that fail).
    assert "tier premium does not degrade" in fb.choose("large", "h100-large", principal("premium"))
    assert "may not use its fallback" in fb.choose(
        "large", "h100-large", principal("free", frozenset({"large"}))
    )
    room["l4-small"] = 0
    assert "has no room either" in fb.choose("large", "h100-large", principal("free"))
    room["h100-large"] = None  # no engine at all: the fallback's engines take it, even full
    got = fb.choose("large", "h100-large", principal("free"))
    assert isinstance(got, Degraded) and "has no serving engine" in got.reason
    room["h100-large"] = 1  # room again: nothing to degrade from
    assert fb.choose("large", "h100-large", principal("free")) is None
    assert fb.choose("small", "l4-small", principal("free")) is None  # no fallback named


def test_a_fallback_must_be_another_pools_model():
    with pytest.raises(Exception, match=r"fallbacks\.large: 'tiny' is not a model of any pool"):
        mesh(fallbacks={"large": "tiny"})
