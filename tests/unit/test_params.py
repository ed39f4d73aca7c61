"""Request validation and mapping to vLLM (services/engine/params.py), with a fake tokenizer."""

import pytest

from services.common.errors import InvalidArgument
from services.engine.params import Limits, prepare
from switchyard.v1 import inference_pb2 as pb


class FakeTokenizer:
    """One token per whitespace-separated word; the chat template joins role: content lines."""

    def encode(self, text, add_special_tokens=True):
        ids = [len(w) for w in text.split()]
        return ([1] if add_special_tokens else []) + ids

    def apply_chat_template(self, conversation, tokenize=False, add_generation_prompt=True):
        text = " ".join(f"{m['role']}: {m['content']}" for m in conversation)
        return text + (" assistant:" if add_generation_prompt else "")


LIMITS = Limits(served_name="small", max_model_len=64, default_max_tokens=16, max_tokens_limit=48)


def make_request(**kw) -> pb.GenerateRequest:
    sampling = kw.pop("sampling", {})
    structured = kw.pop("structured_output", None)
    req = pb.GenerateRequest(**{"prompt": "hello there", **kw})
    for k, v in sampling.items():
        if k == "stop":
            req.sampling.stop.extend(v)
        else:
            setattr(req.sampling, k, v)
    if structured:
        req.structured_output.CopyFrom(structured)
    return req


def prep(**kw):
    return prepare(make_request(**kw), FakeTokenizer(), LIMITS)


def test_defaults():
    p = prep()
    assert p.prompt_token_ids == [1, 5, 5]
    assert p.sampling.max_tokens == 16
    assert p.sampling.output_kind.name == "DELTA"
    assert p.priority == 0
    assert p.request_id


def test_maps_every_sampling_field():
    p = prep(
        sampling=dict(
            max_tokens=8,
            temperature=0.5,
            top_p=0.9,
            top_k=5,
            repetition_penalty=1.1,
            stop=["END"],
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            min_p=0.1,
            ignore_eos=True,
        ),
        priority=3,
        request_id="r1",
    )
    s = p.sampling
    assert (s.max_tokens, s.temperature, s.top_k, s.seed) == (8, 0.5, 5, 7)
    assert s.top_p == pytest.approx(0.9) and s.repetition_penalty == pytest.approx(1.1)
    assert s.presence_penalty == 0.5 and s.frequency_penalty == -0.5
    assert s.min_p == pytest.approx(0.1) and s.ignore_eos and s.stop == ["END"]
    assert p.priority == -3, "the API's higher-first priority becomes vLLM's lower-first"
    assert p.request_id == "r1"


def test_chat_uses_template():
    req = pb.GenerateRequest(
        conversation=pb.Conversation(
            messages=[
                pb.ChatMessage(role="system", content="be brief"),
                pb.ChatMessage(role="user", content="hi"),
            ]
        )
    )
    p = prepare(req, FakeTokenizer(), LIMITS)
    # "system: be brief user: hi assistant:" → 6 words, no extra BOS (template owns it)
    assert len(p.prompt_token_ids) == 6


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(prompt=""), "prompt must not be empty"),
        (dict(model="gpt-9"), "model 'gpt-9' is not served here"),
        (dict(sampling=dict(max_tokens=0)), "sampling.max_tokens must be at least 1"),
        (dict(sampling=dict(max_tokens=49)), "sampling.max_tokens must be at most 48"),
        (dict(sampling=dict(temperature=-0.1)), "sampling.temperature must be in"),
        (dict(sampling=dict(top_p=0.0)), "sampling.top_p must be in (0, 1]"),
        (dict(sampling=dict(top_p=1.5)), "sampling.top_p must be in (0, 1]"),
        (dict(sampling=dict(top_k=-2)), "sampling.top_k"),
        (dict(sampling=dict(repetition_penalty=0.0)), "sampling.repetition_penalty"),
        (dict(sampling=dict(presence_penalty=3.0)), "sampling.presence_penalty"),
        (dict(sampling=dict(min_p=1.5)), "sampling.min_p"),
        (dict(sampling=dict(stop=["ok", ""])), "sampling.stop[1] must not be empty"),
        (
            dict(structured_output=pb.StructuredOutput(regex="a(b")),
            "structured_output.regex is not a valid regex",
        ),
        (
            dict(structured_output=pb.StructuredOutput(json_schema="{nope")),
            "structured_output.json_schema is not valid JSON",
        ),
        (
            dict(structured_output=pb.StructuredOutput(json_schema='{"type": 12}')),
            "structured_output.json_schema is not a valid schema",
        ),
        (
            dict(structured_output=pb.StructuredOutput(json_schema="[1]")),
            "structured_output.json_schema must be a JSON object",
        ),
        (
            dict(structured_output=pb.StructuredOutput(choice=pb.ChoiceList(choices=[]))),
            "structured_output.choice.choices",
        ),
        (dict(prompt="w " * 60, sampling=dict(max_tokens=10)), "exceed the model's context of 64"),
        (dict(sampling=dict(temperature=float("inf"))), "sampling.temperature must be a finite"),
        (dict(sampling=dict(top_p=float("nan"))), "sampling.top_p must be a finite number"),
        (
            dict(sampling=dict(presence_penalty=float("-inf"))),
            "sampling.presence_penalty must be a finite number",
        ),
        (
            dict(
                continuation=pb.Continuation(received_text="a", resumed=1),
                structured_output=pb.StructuredOutput(regex="a+"),
            ),
            "continuation: a turn constrained by structured_output.regex cannot be resumed",
        ),
        (
            dict(continuation=pb.Continuation(received_text="a", resumed=0)),
            "continuation.resumed must be at least 1",
        ),
    ],
)
def test_bad_input_names_the_field(kw, message):
    with pytest.raises(InvalidArgument) as e:
        prep(**kw)
    assert message in e.value.message


def test_missing_input():
    with pytest.raises(InvalidArgument, match="one of prompt or conversation is required"):
        prepare(pb.GenerateRequest(), FakeTokenizer(), LIMITS)


def test_bad_chat_role():
    req = pb.GenerateRequest(
        conversation=pb.Conversation(messages=[pb.ChatMessage(role="wizard", content="hi")])
    )
    with pytest.raises(InvalidArgument, match=r"conversation.messages\[0\].role"):
        prepare(req, FakeTokenizer(), LIMITS)


def test_truncate_prompt_keeps_the_newest_tokens():
    words = " ".join(f"w{i:02d}" for i in range(60))  # 1 BOS + 60 tokens
    p = prep(prompt=words, sampling=dict(max_tokens=10), truncate_prompt=True)
    assert len(p.prompt_token_ids) == 54
    assert p.truncated_tokens == 7


def test_default_max_tokens_shrinks_to_fit_the_context():
    p = prep(prompt="w " * 60)  # 61 tokens, context 64
    assert p.sampling.max_tokens == 3


def test_structured_outputs_map():
    p = prep(structured_output=pb.StructuredOutput(regex=r"[a-z]+@example\.com"))
    assert p.sampling.structured_outputs.regex == r"[a-z]+@example\.com"
    p = prep(structured_output=pb.StructuredOutput(choice=pb.ChoiceList(choices=["yes", "no"])))
    assert p.sampling.structured_outputs.choice == ["yes", "no"]
    p = prep(structured_output=pb.StructuredOutput(json_schema='{"type": "object"}'))
    assert p.sampling.structured_outputs.json == {"type": "object"}


def test_a_reused_client_request_id_still_gets_a_unique_engine_id():
    a, b = prep(request_id="same"), prep(request_id="same")
    assert a.request_id == b.request_id == "same"
    assert a.engine_request_id != b.engine_request_id


def test_a_continuation_prefills_the_received_text_and_generates_the_rest():
    c = pb.Continuation(received_text="once upon", completion_tokens=5, resumed=1)
    p = prep(prompt="tell a story", sampling=dict(max_tokens=12), continuation=c)
    # The prompt (BOS + 3 words), then the received text without special tokens.
    assert p.prompt_token_ids == [1, 4, 1, 5, 4, 4]
    assert p.prompt_tokens == 4  # usage counts the prompt proper
    assert p.sampling.max_tokens == 7  # 12 - 5 already received
    assert (p.resumed_completion_tokens, p.resumed, p.exhausted) == (5, 1, False)


def test_a_continuation_after_the_last_token_ends_at_once():
    c = pb.Continuation(received_text="the end", completion_tokens=12, resumed=2)
    p = prep(sampling=dict(max_tokens=12), continuation=c)
    assert p.exhausted and p.resumed == 2
    # Without max_tokens the engine's default budget applies (16).
    assert prep(continuation=pb.Continuation(completion_tokens=16, resumed=1)).exhausted
    assert not prep(continuation=pb.Continuation(completion_tokens=15, resumed=1)).exhausted


def test_a_continuation_may_truncate_into_what_was_received():
    c = pb.Continuation(received_text="w " * 40, completion_tokens=40, resumed=1)
    p = prep(prompt="w " * 20, sampling=dict(max_tokens=48), truncate_prompt=True, continuation=c)
    assert len(p.prompt_token_ids) == 64 - 8 and p.sampling.max_tokens == 8
    # 21 prompt + 40 received + 8 left to generate > 64: the 5 oldest prompt tokens go.
    assert p.truncated_tokens == 5
    assert p.prompt_tokens == 16  # what is left of the prompt proper


def test_anon_repr_carries_no_prompt_text():
    p = prep(prompt="my secret password is hunter2")
    assert "hunter2" not in p.anon_repr()


class DigestTokenizer(FakeTokenizer):
    digest = "fake-1"


def test_the_routers_ids_are_prefilled_as_handed_over():
    import array

    ids = array.array("I", [9, 8, 7, 6]).tobytes()  # (little-endian on every test machine)
    req = make_request(
        prompt="hello there",
        continuation=pb.Continuation(received_text=" more", completion_tokens=1, resumed=1),
        prompt_tokens=pb.PromptTokens(ids=ids, prompt=3, tokenizer="fake-1"),
    )
    p = prepare(req, DigestTokenizer(), LIMITS)
    assert (p.prompt_token_ids, p.prompt_tokens, p.tokenized_by) == ([9, 8, 7, 6], 3, "router")
    # Another tokenizer's ids (or none): the engine tokenizes the turn itself.
    req.prompt_tokens.tokenizer = "another"
    p = prepare(req, DigestTokenizer(), LIMITS)
    assert (p.prompt_token_ids, p.prompt_tokens, p.tokenized_by) == ([1, 5, 5, 4], 3, "engine")
    assert prepare(req, FakeTokenizer(), LIMITS).tokenized_by == "engine"
