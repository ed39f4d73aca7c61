"""The router tokenizes exactly as the engine does (same ids), or prefix matching breaks."""

import pytest

from services.common.errors import InvalidArgument
from services.common.tokens import RustEncoder, load_tokenizer, prompt_token_ids
from switchyard.v1 import inference_pb2 as pb

TEXTS = ["Hello there", "  leading spaces and\ttabs\n", "héllo → 世界 🚀", "a" * 3000, "x"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from transformers import AutoTokenizer

    from services.mesh.models import init_models

    path = init_models(tmp_path_factory.mktemp("models"), ["small"], progress=lambda m: None)
    small = str(path["small"])
    return load_tokenizer(small), AutoTokenizer.from_pretrained(small, local_files_only=True)


def test_router_ids_equal_engine_ids(tokenizers):
    fast, hf = tokenizers
    assert isinstance(fast, RustEncoder)
    for text in TEXTS:
        for special in (True, False):
            assert fast.encode(text, add_special_tokens=special) == hf.encode(
                text, add_special_tokens=special
            ), text


def test_prompt_and_conversation_ids_match(tokenizers):
    fast, hf = tokenizers
    req = pb.GenerateRequest(prompt="héllo → 世界")
    assert prompt_token_ids(req, fast) == prompt_token_ids(req, hf)
    chat = pb.GenerateRequest(
        conversation=pb.Conversation(
            messages=[
                pb.ChatMessage(role="system", content="Be brief."),
                pb.ChatMessage(role="user", content="What is a switchyard?"),
            ]
        )
    )
    assert prompt_token_ids(chat, fast) == prompt_token_ids(chat, hf)


def test_missing_input_names_the_fields(tokenizers):
    fast, _ = tokenizers
    with pytest.raises(InvalidArgument, match="one of prompt or conversation is required"):
        prompt_token_ids(pb.GenerateRequest(), fast)


def test_fit_context_matches_the_engines_rules():
    from services.common.tokens import fit_context

    assert fit_context(10, 5, 64, default_max_tokens=16, truncate=False) == (5, 0)
    assert fit_context(60, None, 64, default_max_tokens=16, truncate=False) == (4, 0)
    assert fit_context(70, 10, 64, default_max_tokens=16, truncate=True) == (10, 16)
    with pytest.raises(InvalidArgument, match="exceed the model's context of 64"):
        fit_context(70, 10, 64, default_max_tokens=16, truncate=False)
    with pytest.raises(InvalidArgument, match="set truncate_prompt"):
        fit_context(10, 64, 64, default_max_tokens=16, truncate=True)  # no room at all


def test_a_continuation_appends_the_received_text_without_special_tokens(tokenizers):
    from services.common.tokens import turn_token_ids

    fast, hf = tokenizers
    req = pb.GenerateRequest(
        prompt="Tell me", continuation=pb.Continuation(received_text=" a story", resumed=1)
    )
    assert turn_token_ids(req, fast) == hf.encode("Tell me") + hf.encode(
        " a story", add_special_tokens=False
    )


def test_too_many_tokens_says_how_many(tokenizers):
    from services.common.tokens import TooManyTokens, turn_tokens

    fast, hf = tokenizers
    middling = "a text of middling length " * 400  # 10 kB: one piece
    m = len(hf.encode(middling))
    with pytest.raises(TooManyTokens) as e:
        turn_tokens(pb.GenerateRequest(prompt=middling), fast, limit=m - 10)
    assert (e.value.count, e.value.exact) == (m, True)
    text = "many words here " * 3000
    n = len(hf.encode(text))
    with pytest.raises(TooManyTokens) as e:
        turn_tokens(pb.GenerateRequest(prompt=text), fast, limit=n - 1)
    assert (e.value.count, e.value.limit, e.value.exact) == (n, n - 1, True)
    assert turn_tokens(pb.GenerateRequest(prompt=text), fast, limit=n).count == n
    # Far over the limit, the text's beginning is enough to refuse it.
    with pytest.raises(TooManyTokens) as e:
        turn_tokens(pb.GenerateRequest(prompt=text * 100), fast, limit=100)
    assert not e.value.exact and e.value.count > 100
    assert e.value.describe() == "more than 100 tokens"


def test_a_prompt_the_engine_truncates_keeps_only_its_last_tokens(tokenizers):
    from services.common.tokens import turn_tokens

    fast, hf = tokenizers
    text = "the tail is what counts " * 2000
    every = hf.encode(text)
    got = turn_tokens(pb.GenerateRequest(prompt=text), fast, keep_last=64)
    assert got.count == len(every) and got.ids == every[-64:]


def test_a_chat_template_that_refuses_is_the_callers_mistake():
    class Refusing:
        def encode(self, text, add_special_tokens=True):
            return [1]

        def apply_chat_template(self, conversation, **kw):
            raise ValueError("Conversation roles must alternate user/assistant/user/assistant")

    req = pb.GenerateRequest(
        conversation=pb.Conversation(messages=[pb.ChatMessage(role="assistant", content="x")])
    )
    with pytest.raises(InvalidArgument, match="conversation: the model's chat template refused"):
        prompt_token_ids(req, Refusing())


async def test_a_long_prompt_tokenizes_while_the_loop_keeps_running(tokenizers):
    import asyncio

    from services.common.tokens import turn_tokens_async

    fast, _ = tokenizers
    text = "The quick brown fox jumps over the lazy dog. " * 40_000  # 1.8 MB
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    t = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    got = await turn_tokens_async(pb.GenerateRequest(prompt=text), fast)
    t.cancel()
    assert got.count > 300_000
    assert ticks >= 5, "the event loop was blocked while the prompt was tokenized"


def test_the_routers_ids_are_handed_to_an_engine_of_the_same_tokenizer(tokenizers):
    from services.common.tokens import handed_off, handoff, tokenizer_digest, turn_tokens

    fast, hf = tokenizers
    path = hf.name_or_path
    again = load_tokenizer(path)  # (the engine's own copy: the same digest)
    assert tokenizer_digest(fast) == tokenizer_digest(again) != ""
    req = pb.GenerateRequest(
        prompt="Tell me", continuation=pb.Continuation(received_text=" a story", resumed=1)
    )
    turn = turn_tokens(req, fast)
    req.prompt_tokens.CopyFrom(handoff(turn, fast))
    ids, prompt = handed_off(req, again)
    assert ids == hf.encode("Tell me") + hf.encode(" a story", add_special_tokens=False)
    assert prompt == len(hf.encode("Tell me"))


def test_ids_of_another_tokenizer_or_malformed_are_not_used(tokenizers):
    from services.common.tokens import handed_off, handoff, turn_tokens

    fast, _ = tokenizers
    req = pb.GenerateRequest(prompt="Tell me")
    good = handoff(turn_tokens(req, fast), fast)
    assert good is not None
    for bad in (
        pb.PromptTokens(ids=good.ids, prompt=good.prompt, tokenizer="another"),
        pb.PromptTokens(ids=good.ids[:-1], prompt=good.prompt, tokenizer=good.tokenizer),
        pb.PromptTokens(ids=good.ids, prompt=len(good.ids), tokenizer=good.tokenizer),
        pb.PromptTokens(ids=b"", prompt=0, tokenizer=good.tokenizer),
    ):
        req.prompt_tokens.CopyFrom(bad)
        assert handed_off(req, fast) is None, bad
    req.ClearField("prompt_tokens")
    assert handed_off(req, fast) is None


def test_a_prompt_truncated_by_the_router_is_not_handed_off(tokenizers):
    from services.common.tokens import handoff, turn_tokens

    fast, _ = tokenizers
    turn = turn_tokens(pb.GenerateRequest(prompt="the tail " * 200), fast, keep_last=16)
    assert len(turn.ids) == 16 < turn.count
    assert handoff(turn, fast) is None
