"""RoutingService (services/router/routing.py): limits refused as the engine would, truncation
routed as the engine will prefill, resumed turns, and the registration grace after a restart."""

import asyncio

import pytest

from services.common.config import parse_config
from services.common.errors import InvalidArgument, Unavailable
from services.router.config import MeshConfig, ModelResolver
from services.router.registry import Registry
from services.router.routing import Limits, RoutingService, TokenizerCache
from services.router.scheduling.scheduler import Scheduler
from services.router.sessions import SessionTable
from services.router.testing import make_info, make_load
from switchyard.v1 import inference_pb2 as pb

POOL, MODEL = "pool-a", "model-a"


class WordTokenizer:
    """One token per word, plus a BOS for raw prompts."""

    def encode(self, text, add_special_tokens=True):
        return ([1] if add_special_tokens else []) + [len(w) for w in text.split()]

    def apply_chat_template(self, conversation, **kw):
        return " ".join(m["content"] for m in conversation)


class Tokenizers(TokenizerCache):
    def __init__(self):
        pass

    def get(self, model, version=""):
        return WordTokenizer()


def service(limits=None, *, context=64, max_tokens_limit=32, engines=1):
    cfg = parse_config(
        {
            "pools": [
                {"name": POOL, "accelerator": "cpu", "models": [{"name": MODEL, "tokenizer": "/t"}]}
            ]
        },
        MeshConfig,
    )
    reg = Registry()
    for i in range(engines):
        reg.register(
            make_info(f"e{i}", max_model_len=context, max_tokens_limit=max_tokens_limit),
            f"10.1.0.{i + 1}:8000",
        )
        reg.on_load(f"e{i}", make_load(f"e{i}"))
    sched = Scheduler(reg, reg.index, SessionTable())
    return RoutingService(ModelResolver(cfg), Tokenizers(), sched, reg, limits or Limits()), reg


def request(prompt="one two three", **sampling):
    req = pb.GenerateRequest(prompt=prompt)
    for k, v in sampling.items():
        setattr(req.sampling, k, v)
    return req


async def test_routes_on_the_prompt_tokens():
    routing, _ = service()
    decision, rr = await routing.route(request(max_tokens=4))
    assert rr.prompt_token_ids == [1, 3, 3, 5] and rr.max_tokens == 4
    assert decision.engine.engine_id == "e0"


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (request(max_tokens=33), "sampling.max_tokens must be at most 32, got 33"),
        (request(max_tokens=0), "sampling.max_tokens must be at least 1, got 0"),
        (request("w " * 70, max_tokens=4), "exceed the model's context of 64 tokens"),
        (request("w " * 62, max_tokens=4), "exceed the model's context of 64 tokens"),
    ],
)
async def test_what_no_engine_would_take_is_invalid_argument_not_unavailable(req, message):
    routing, _ = service()
    with pytest.raises(InvalidArgument, match=message):
        await routing.route(req)


async def test_a_token_limit_of_the_mesh_is_named():
    routing, _ = service(Limits(max_prompt_tokens=10))
    with pytest.raises(InvalidArgument, match=r"prompt is 21 tokens, over the mesh's limit of 10"):
        await routing.route(request("w " * 20))


async def test_truncate_prompt_routes_on_the_tokens_the_engine_keeps():
    routing, _ = service()
    req = request(" ".join(f"w{i:02d}" for i in range(70)), max_tokens=4)
    req.truncate_prompt = True
    _, rr = await routing.route(req)
    assert len(rr.prompt_token_ids) == 60  # 71 tokens, context 64, 4 to generate


async def test_a_resumed_turn_routes_on_prompt_and_received_text_with_its_remaining_budget():
    routing, _ = service()
    req = request("tell a story", max_tokens=20)
    req.continuation.received_text = "once upon a"
    req.continuation.completion_tokens = 6
    req.continuation.resumed = 1
    _, rr = await routing.route(req)
    assert rr.prompt_token_ids == [1, 4, 1, 5, 4, 4, 1]
    assert rr.max_tokens == 14


async def test_no_engine_yet_waits_for_a_registration_during_the_grace():
    routing, reg = service(Limits(registration_grace_seconds=5.0), engines=0)

    async def register_soon():
        await asyncio.sleep(0.05)
        reg.register(make_info("late", max_model_len=64), "10.1.0.9:8000")
        reg.on_load("late", make_load("late"))

    joiner = asyncio.create_task(register_soon())
    decision, _ = await routing.route(request(max_tokens=4))
    await joiner
    assert decision.engine.engine_id == "late"


async def test_no_engine_fails_at_once_without_a_grace():
    routing, _ = service(engines=0)
    with pytest.raises(Unavailable, match="no engines registered"):
        await routing.route(request(max_tokens=4))


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    from services.common.tokens import load_tokenizer
    from services.mesh.models import init_models

    path = init_models(tmp_path_factory.mktemp("models"), ["small"], progress=lambda m: None)
    return load_tokenizer(str(path["small"]))


async def test_huge_prompts_never_block_the_loop_that_routes_everyone_else(small_tokenizer):
    from services.common.looplag import watch_loop

    class Real(TokenizerCache):
        def __init__(self):
            pass

        def get(self, model, version=""):
            return small_tokenizer

    routing, _ = service(context=2048, max_tokens_limit=2048, engines=2)
    routing.tokenizers = Real()
    lags: list[float] = []
    monitor = asyncio.create_task(watch_loop(0.005, lags.append))
    huge = "The quick brown fox jumps over the lazy dog, again. " * 75_000  # 3.9 MB

    async def refused():
        with pytest.raises(InvalidArgument, match="cannot fit the model's context of 2048"):
            await routing.route(request(huge, max_tokens=4))

    async def truncated():
        req = request(huge, max_tokens=4)
        req.truncate_prompt = True
        _, rr = await routing.route(req)
        assert len(rr.prompt_token_ids) == 2044

    async def small(i):
        await asyncio.sleep(0.02 * i)
        _, rr = await routing.route(request(f"turn {i} is short", max_tokens=4))
        return rr

    await asyncio.gather(refused(), truncated(), *(small(i) for i in range(40)))
    monitor.cancel()
    lags.sort()
    assert len(lags) > 50
    p99 = lags[int(0.99 * len(lags))]
    assert p99 < 0.02, f"event-loop lag p99 {p99 * 1e3:.1f} ms, max {lags[-1] * 1e3:.1f} ms"


async def test_a_conversation_without_session_ids_stays_on_its_engine():
    """Turns of one chat sent without a session id follow its first turn (as they would with
    one), though another engine is now less loaded; a new conversation goes there."""
    routing, reg = service(engines=2)
    system, opening = ("system", "You are terse."), ("user", "Plan a trip to Lyon.")

    def chat(*messages):
        req = pb.GenerateRequest()
        for role, content in messages:
            req.conversation.messages.add(role=role, content=content)
        return req

    first, rr = await routing.route(chat(system, opening), tenant="acme")
    assert rr.session_id.startswith("~conv:")
    home = first.engine.engine_id
    other = "e1" if home == "e0" else "e0"
    reg.on_load(home, make_load(home, running=3))  # its engine is now the busier one
    reg.on_load(other, make_load(other))
    later = chat(system, opening, ("assistant", "Day one: the old town."), ("user", "Day two?"))
    second, rr2 = await routing.route(later, tenant="acme")
    assert rr2.session_id == rr.session_id
    assert second.engine.engine_id == home and second.reason == "session"
    fresh, _ = await routing.route(chat(system, ("user", "Plan a trip to Oslo.")), tenant="acme")
    assert fresh.engine.engine_id == other


async def test_the_prompt_policy_applies_before_routing_per_tenant_and_model():
    from services.common.errors import PermissionDenied
    from services.safety.config import SafetyConfig
    from services.safety.prompt import PromptPolicy

    policy = parse_config(
        {
            "default": {"prompt": "redact", "actions": {"SECRET_PROJECT": "block"}},
            "models": {"other-model": {"prompt": "allow"}},
            "tenants": {"strict": {"prompt": "reject"}, "open": {"prompt": "allow"}},
            "categories": {"SECRET_PROJECT": ["project nightingale"]},
        },
        SafetyConfig,
    )
    routing, _ = service()
    routing.prompt_policy = PromptPolicy(policy)
    req = request("mail bob@example.com now", max_tokens=4)
    _, rr = await routing.route(req, tenant="acme")
    # The engine prefills "mail [EMAIL] now": the turn is routed on those tokens.
    assert req.prompt == "mail [EMAIL] now" and rr.prompt_token_ids == [1, 4, 7, 3]
    assert rr.prompt_outcome == "redacted" and rr.prompt_findings == {"EMAIL": 1}
    assert rr.prompt_actions == {"EMAIL": "redact"}
    clean = request("one two three", max_tokens=4)
    _, rr = await routing.route(clean, tenant="acme")
    assert rr.prompt_outcome == "passed" and clean.prompt == "one two three"
    with pytest.raises(InvalidArgument, match="prompt contains EMAIL"):
        await routing.route(request("mail bob@example.com", max_tokens=4), tenant="strict")
    with pytest.raises(PermissionDenied, match="SECRET_PROJECT"):
        await routing.route(request("about Project Nightingale", max_tokens=4), tenant="acme")
    kept = request("mail bob@example.com", max_tokens=4)
    _, rr = await routing.route(kept, tenant="open")
    assert kept.prompt == "mail bob@example.com" and rr.prompt_findings == {"EMAIL": 1}
