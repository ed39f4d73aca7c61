"""The OpenAI translation (services/openai): request bodies → GenerateRequest, scrubbed events
→ SSE chunks / JSON, errors → OpenAI error objects; table tests, no processes."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from services.common.errors import InvalidArgument, NotFound, PayloadTooLarge, ResourceExhausted
from services.openai import errors
from services.openai.request import Wire, api_of, model_id, translate
from services.openai.stream import DONE, Encoder
from services.safety.response import ResponseFilter
from services.safety.scrubber import Policy
from switchyard.v1 import inference_pb2


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "small", "messages": [{"role": "user", "content": "hi"}]} | fields)


def test_paths_name_the_api_and_unknown_v1_paths_are_not_found() -> None:
    assert api_of("/v1/chat/completions") == "chat"
    assert api_of("/v1/completions?x=1") == "completions"
    assert api_of("/v1/models") == "models"
    assert api_of("/v1/models/small") == "model" and model_id("/v1/models/a%2Fb") == "a/b"
    assert api_of("/switchyard.v1.Inference/Generate") is None
    with pytest.raises(NotFound, match="/v1/embeddings is not served"):
        api_of("/v1/embeddings")


def test_chat_request_translates_every_supported_field() -> None:
    body = chat(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
            },
            {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": "Again"},
        ],
        max_tokens=99,
        max_completion_tokens=12,
        temperature=0.5,
        top_p=0.9,
        stop=["\n", "END"],
        seed=7,
        presence_penalty=0.1,
        frequency_penalty=-0.2,
        user="u-1",
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}},
        },
        session_id="s1",
        stream=True,
        stream_options={"include_usage": True},
        n=1,
        store=False,
    )
    wire, req = translate("chat", body.encode(), now=1700000000)
    assert req.model == "small"
    assert [(m.role, m.content) for m in req.conversation.messages] == [
        ("system", "Be brief."),
        ("user", "Hello"),
        ("assistant", "Hi"),
        ("user", "Again"),
    ]
    s = req.sampling
    assert s.max_tokens == 12  # max_completion_tokens wins
    assert (round(s.temperature, 3), round(s.top_p, 3), s.seed) == (0.5, 0.9, 7)
    assert list(s.stop) == ["\n", "END"]
    assert round(s.presence_penalty, 3) == 0.1 and round(s.frequency_penalty, 3) == -0.2
    assert json.loads(req.structured_output.json_schema) == {"type": "object"}
    assert req.session_id == "s1" and req.labels["user"] == "u-1"
    assert wire.api == "chat" and wire.stream and wire.include_usage
    assert wire.id.startswith("chatcmpl-") and wire.created == 1700000000
    assert Wire.decode(wire.serving("small").encode()) == wire.serving("small")


def test_completions_request_and_switchyard_extensions() -> None:
    body = {
        "model": "reasoning",
        "prompt": ["Once"],
        "max_tokens": 5,
        "regex": "[a-z]+",
        "top_k": 4,
    }
    wire, req = translate("completions", json.dumps(body).encode())
    assert req.prompt == "Once" and req.model == "reasoning"
    assert req.structured_output.regex == "[a-z]+" and req.sampling.top_k == 4
    assert wire.api == "completions" and not wire.stream and wire.id.startswith("cmpl-")
    _, req = translate(
        "completions", b'{"prompt": "x", "response_format": {"type": "json_object"}}'
    )
    assert req.model == "auto" and json.loads(req.structured_output.json_schema) == {
        "type": "object"
    }


@pytest.mark.parametrize(
    ("api", "body", "param", "message"),
    [
        ("chat", b"{not json", None, "not valid JSON"),
        ("chat", b"[1]", None, "must be a JSON object"),
        ("chat", b'{"model": "small"}', "messages", "messages must be a non-empty array"),
        ("chat", chat(n=2), "n", "n must be 1"),
        ("chat", chat(tools=[{"type": "function"}]), "tools", "tool calling is not supported"),
        ("chat", chat(logprobs=True), "logprobs", "logprobs are not served"),
        ("chat", chat(temperature=3), "temperature", "temperature must be in [0.0, 2.0]"),
        ("chat", chat(temperature="hot"), "temperature", "temperature must be a number"),
        ("chat", chat(max_tokens=0), "max_tokens", "max_tokens must be at least 1"),
        ("chat", chat(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
        ("chat", chat(stream_options={"include_usage": True}), "stream_options", "only allowed"),
        ("chat", chat(frobnicate=1), "frobnicate", "frobnicate is not a supported field"),
        ("chat", chat(response_format={"type": "xml"}), "response_format.type", "must be text"),
        (
            "chat",
            chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
            "messages[0].content[0].type",
            '"image_url" is not supported',
        ),
        ("chat", chat(messages=[{"role": "tool", "content": "x"}]), "messages[0].role", "tool"),
        ("chat", chat(messages=[{"role": "robot", "content": "x"}]), "messages[0].role", "robot"),
        ("completions", b'{"prompt": [1, 2]}', "prompt", "token-id prompts"),
        ("completions", b'{"prompt": ["a", "b"]}', "prompt", "one prompt per request"),
        ("completions", b'{"prompt": "a", "echo": true}', "echo", "echo is not supported"),
    ],
)
def test_unsupported_or_malformed_fields_are_400s_naming_the_field(
    api: str, body: str | bytes, param: str | None, message: str
) -> None:
    raw = body.encode() if isinstance(body, str) else body
    with pytest.raises(InvalidArgument) as e:
        translate(api, raw)
    assert message in e.value.message
    assert e.value.param == param
    status, _, payload = errors.of(e.value)
    assert status == 400
    error = json.loads(payload)["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


@pytest.mark.parametrize(
    ("err", "status", "error_type"),
    [
        (InvalidArgument("x"), 400, "invalid_request_error"),
        (NotFound("model 'x' is unknown"), 404, "not_found_error"),
        (PayloadTooLarge("too big"), 413, "invalid_request_error"),
        (ResourceExhausted("over quota"), 429, "rate_limit_error"),
    ],
)
def test_errors_map_to_http_statuses_the_sdks_know(err: Any, status: int, error_type: str) -> None:
    got, _, payload = errors.of(err)
    assert got == status
    assert json.loads(payload)["error"]["type"] == error_type
    assert errors.http_status(grpc.StatusCode.UNAUTHENTICATED.value[0]) == (
        401,
        "authentication_error",
    )
    assert errors.http_status(grpc.StatusCode.PERMISSION_DENIED.value[0])[0] == 403
    assert errors.http_status(grpc.StatusCode.UNAVAILABLE.value[0])[0] == 503


def test_over_quota_carries_retry_after_in_whole_seconds() -> None:
    from services.router.tenancy.admission import QuotaExceeded

    status, extra, _ = errors.of(QuotaExceeded("tokens_per_minute exhausted", 2.2, "tpm=0"))
    assert status == 429
    assert ("retry-after", "3") in extra


def _frames(*events: inference_pb2.GenerateResponse) -> bytes:
    from services.common.frames import encode_frame

    return b"".join(encode_frame(e.SerializeToString()) for e in events)


def _delta(text: str) -> inference_pb2.GenerateResponse:
    return inference_pb2.GenerateResponse(delta=inference_pb2.Delta(text=text, token_count=1))


def _final(reason: int = inference_pb2.FINISH_REASON_STOP) -> inference_pb2.GenerateResponse:
    return inference_pb2.GenerateResponse(
        final=inference_pb2.Final(
            finish_reason=reason,  # type: ignore[arg-type]
            usage=inference_pb2.Usage(
                prompt_tokens=10, cached_prompt_tokens=8, completion_tokens=2
            ),
        )
    )


def _events(raw: bytes) -> list[Any]:
    out = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: ")
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def wire(**kw: Any) -> Wire:
    fields: dict[str, Any] = {
        "api": "chat",
        "stream": True,
        "include_usage": False,
        "id": "chatcmpl-1",
        "created": 1,
        "model": "small",
    }
    return Wire(**(fields | kw))


def test_streamed_chat_is_sse_chunks_then_finish_then_done() -> None:
    f = ResponseFilter(Policy(), encoder=Encoder(wire(include_usage=True)))
    out = f.feed(_frames(_delta("Hel"), _delta("lo"), _final()))
    events = _events(out)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-1" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        == "Hello"
    )
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finish] == ["stop"]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 8
    }
    assert usage["usage"]["total_tokens"] == 12
    assert all(c["usage"] is None for c in chunks[:-1])


def test_split_chunks_and_pii_are_scrubbed_before_encoding() -> None:
    f = ResponseFilter(Policy(), encoder=Encoder(wire(api="completions", id="cmpl-1")))
    raw = _frames(_delta("mail bob@exa"), _delta("mple.com now"), _final())
    out = b"".join(f.feed(raw[i : i + 7]) for i in range(0, len(raw), 7))
    events = _events(out)
    text = "".join(e["choices"][0]["text"] for e in events[:-1])
    assert "bob@example.com" not in text and "example.com" not in text
    assert events[0]["object"] == "text_completion" and events[-1] == "[DONE]"


def test_not_streamed_is_one_json_object_at_the_final() -> None:
    encoder = Encoder(wire(stream=False))
    f = ResponseFilter(Policy(), encoder=encoder)
    assert f.feed(_frames(_delta("Hi "), _delta("there"))) == b""
    out = json.loads(f.feed(_frames(_final(inference_pb2.FINISH_REASON_LENGTH))))
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Hi there"}
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["prompt_tokens"] == 10 and out["usage"]["completion_tokens"] == 2
    assert encoder.content_type == "application/json"


def test_a_safety_block_is_content_filter() -> None:
    policy = Policy(actions={"EMAIL": "block"})
    f = ResponseFilter(policy, encoder=Encoder(wire()))
    events = _events(f.feed(_frames(_delta("write to a@b.co please"), _final())))
    reasons = [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]]
    assert reasons[-1] == "content_filter" and events[-1] == "[DONE]"
    assert "a@b.co" not in json.dumps(events)


def test_an_error_after_the_stream_started_is_an_error_event() -> None:
    encoder = Encoder(wire())
    event = _events(encoder.error(grpc.StatusCode.UNAVAILABLE.value[0], "engine died"))
    assert event[0]["error"]["message"] == "engine died"
    assert encoder.finished
    plain = Encoder(wire(stream=False)).error(grpc.StatusCode.INTERNAL.value[0], "boom")
    assert json.loads(plain)["error"]["type"] == "server_error"
    assert DONE not in plain
