"""The safety filter's answers on an OpenAI HTTP turn's response (services/safety/http_response):
headers held or sent, trailers-only errors, mid-stream errors as events, local replies passed."""

from __future__ import annotations

import base64
import json
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from services.common import headers as h
from services.common.frames import encode_frame
from services.openai.request import Wire
from services.openai.stream import Encoder
from services.safety.http_response import HttpResponse
from services.safety.response import ResponseFilter
from services.safety.scrubber import Policy
from switchyard.v1 import inference_pb2

SERVED = inference_pb2.ServedBy(pool="l4-small", engine="l4-small-0")


def make(stream: bool) -> HttpResponse:
    wire = Wire(api="chat", stream=stream, include_usage=False, id="chatcmpl-1", created=1)
    encoder = Encoder(wire.serving("small"))
    return HttpResponse(encoder, ResponseFilter(Policy(), encoder=encoder), trace_id="ab" * 16)


def header_msg(end: bool = False, **fields: str) -> ext.HttpHeaders:
    return ext.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in fields.items()]
        ),
        end_of_stream=end,
    )


def engine_headers() -> ext.HttpHeaders:
    served = base64.b64encode(SERVED.SerializeToString()).decode().rstrip("=")
    return header_msg(**{":status": "200", "content-type": "application/grpc", h.SERVED_BY: served})


def trailers(**fields: str) -> ext.HttpTrailers:
    return ext.HttpTrailers(
        trailers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in fields.items()]
        )
    )


def body(*events: inference_pb2.GenerateResponse, end: bool = False) -> ext.HttpBody:
    return ext.HttpBody(
        body=b"".join(encode_frame(e.SerializeToString()) for e in events), end_of_stream=end
    )


def delta(text: str) -> inference_pb2.GenerateResponse:
    return inference_pb2.GenerateResponse(delta=inference_pb2.Delta(text=text, token_count=1))


def final() -> inference_pb2.GenerateResponse:
    return inference_pb2.GenerateResponse(
        final=inference_pb2.Final(finish_reason=inference_pb2.FINISH_REASON_STOP)
    )


def set_headers(answer: ext.ProcessingResponse) -> dict[str, str]:
    mutation = answer.response_headers.response.header_mutation
    return {o.header.key: o.header.raw_value.decode() for o in mutation.set_headers}


def streamed(answers: list[Any]) -> bytes:
    return b"".join(
        a.response_body.response.body_mutation.streamed_response.body
        for a in answers
        if a.HasField("response_body")
    )


def test_streamed_turn_sends_sse_headers_at_once_and_ends_at_the_trailers() -> None:
    r = make(stream=True)
    [answer] = list(r.on_headers(engine_headers()))
    got = set_headers(answer)
    assert got["content-type"] == "text/event-stream"
    assert got[h.TRACE_ID] == "ab" * 16 and got["x-switchyard-served-by"] == "l4-small/l4-small-0"
    removed = answer.response_headers.response.header_mutation.remove_headers
    assert h.SERVED_BY in removed
    out = streamed(list(r.on_body(body(delta("Hello "), delta("world"), final()))))
    assert out.endswith(b"data: [DONE]\n\n") and b"Hello" in out
    [end] = list(r.on_trailers(trailers(**{"grpc-status": "0"})))
    assert "grpc-status" in end.response_trailers.header_mutation.remove_headers


def test_an_error_in_the_trailers_after_tokens_is_an_error_event() -> None:
    r = make(stream=True)
    list(r.on_headers(engine_headers()))
    list(r.on_body(body(delta("Hel"))))
    answers = list(
        r.on_trailers(trailers(**{"grpc-status": "14", "grpc-message": "engine%20died"}))
    )
    event = streamed(answers).decode()
    assert event.startswith("data: ") and b"[DONE]" not in streamed(answers)
    assert json.loads(event[len("data: ") :])["error"]["message"] == "engine died"
    assert answers[-1].HasField("response_trailers")


def test_a_non_streamed_turn_holds_its_headers_until_it_knows_the_status() -> None:
    r = make(stream=False)
    assert list(r.on_headers(engine_headers())) == []  # held
    assert list(r.on_body(body(delta("Hi")))) == []
    answers = list(r.on_trailers(trailers(**{"grpc-status": "8", "grpc-message": "over quota"})))
    assert set_headers(answers[0])[":status"] == "429"
    assert json.loads(streamed(answers))["error"]["message"] == "over quota"

    ok = make(stream=False)
    list(ok.on_headers(engine_headers()))
    answers = list(ok.on_body(body(delta("Hi"), final())))
    assert ":status" not in set_headers(answers[0])
    assert json.loads(streamed(answers))["choices"][0]["message"]["content"] == "Hi"


def test_a_trailers_only_refusal_is_an_openai_error_with_its_status() -> None:
    r = make(stream=True)
    msg = header_msg(
        end=True,
        **{
            ":status": "200",
            "content-type": "application/grpc",
            "grpc-status": "3",
            "grpc-message": "bad%20regex",
        },
    )
    [answer] = list(r.on_headers(msg))
    immediate = answer.immediate_response
    assert immediate.status.code == 400
    assert json.loads(immediate.body)["error"]["message"] == "bad regex"


def test_a_reply_envoy_wrote_itself_passes_untouched() -> None:
    r = make(stream=True)
    [answer] = list(
        r.on_headers(header_msg(**{":status": "503", "content-type": "application/json"}))
    )
    assert not answer.response_headers.HasField("response")
    [chunk] = list(r.on_body(ext.HttpBody(body=b'{"error": {}}', end_of_stream=True)))
    assert chunk.response_body.response.body_mutation.streamed_response.body == b'{"error": {}}'
    assert chunk.response_body.response.body_mutation.streamed_response.end_of_stream
