"""The prompt policy (allow / redact / reject) and the safety ext_proc's answers, without Envoy."""

from __future__ import annotations

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from services.common import headers as h
from services.common.config import parse_config
from services.common.errors import ConfigError, InvalidArgument, PermissionDenied
from services.common.extproc import header_attributes
from services.common.frames import FrameDecoder, encode_frame, single_message
from services.router.xds.builder import SAFETY_HEADERS
from services.safety.config import SafetyConfig
from services.safety.extproc import SafetyExtProc
from services.safety.prompt import check_prompt
from switchyard.v1 import inference_pb2

CFG = parse_config(
    {
        "default": {"prompt": "redact", "actions": {"IPV4": "allow", "SECRET_PROJECT": "block"}},
        "tenants": {"strict": {"prompt": "reject"}, "open": {"prompt": "allow"}},
        "categories": {"SECRET_PROJECT": ["project nightingale"]},
    },
    SafetyConfig,
)


def chat(*contents: str) -> inference_pb2.GenerateRequest:
    req = inference_pb2.GenerateRequest(model="small")
    req.conversation.messages.extend(
        inference_pb2.ChatMessage(role="user", content=c) for c in contents
    )
    return req


def check(req, tenant=""):
    return check_prompt(req, CFG.policy(tenant), CFG.prompt_mode(tenant), CFG.recognizers)


def test_redact_rewrites_each_message_and_counts():
    req = chat("hi", "mail bob@example.com from 10.0.0.1")
    result = check(req)
    assert result.changed
    assert req.conversation.messages[1].content == "mail [EMAIL] from 10.0.0.1"
    assert result.findings == {"EMAIL": 1, "IPV4": 1}


def test_clean_prompt_is_unchanged():
    req = inference_pb2.GenerateRequest(prompt="tell me about trains")
    assert not check(req).changed and req.prompt == "tell me about trains"


def test_reject_names_the_field_and_types():
    with pytest.raises(InvalidArgument, match=r"conversation.messages\[1\].content contains EMAIL"):
        check(chat("ok", "bob@example.com"), tenant="strict")
    # Allowed types do not make a prompt rejected.
    assert not check(chat("ping 10.0.0.1"), tenant="strict").changed


def test_blocked_category_is_permission_denied():
    with pytest.raises(PermissionDenied, match=r"prompt contains SECRET_PROJECT"):
        check(inference_pb2.GenerateRequest(prompt="status of Project Nightingale?"))


def test_allow_passes_everything_but_counts():
    req = inference_pb2.GenerateRequest(prompt="bob@example.com project nightingale")
    result = check(req, tenant="open")
    assert not result.changed and result.findings == {"EMAIL": 1, "SECRET_PROJECT": 1}


def test_category_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"categories"):
        parse_config({"categories": {"weapons": ["x"]}}, SafetyConfig, "safety.yaml")
    with pytest.raises(ConfigError, match=r"EMAIL: is a built-in"):
        parse_config({"categories": {"EMAIL": ["x"]}}, SafetyConfig, "safety.yaml")
    with pytest.raises(ConfigError, match=r"prompt"):
        parse_config({"default": {"prompt": "maybe"}}, SafetyConfig, "safety.yaml")


# -- the ext_proc exchange ------------------------------------------------------------------


def headers_msg(tenant: str = "") -> ext.ProcessingRequest:
    hdrs = [(":path", "/switchyard.v1.Inference/Generate")]
    if tenant:
        hdrs.append((h.TENANT, tenant))
    msg = ext.ProcessingRequest()
    for k, v in hdrs:
        msg.request_headers.headers.headers.add(key=k, raw_value=v.encode())
    return msg


def body_msg(req: inference_pb2.GenerateRequest) -> ext.ProcessingRequest:
    return ext.ProcessingRequest(
        request_body=ext.HttpBody(body=encode_frame(req.SerializeToString()), end_of_stream=True)
    )


def attributed_body_msg(
    req: inference_pb2.GenerateRequest, tenant: str = ""
) -> ext.ProcessingRequest:
    """A gRPC turn's first message, as Envoy sends it to the safety filter, which skips the
    headers message: the body, with the headers it reads as attributes (an absent header is
    absent)."""
    msg = body_msg(req)
    sent = {h.TENANT: tenant} if tenant else {}
    names = header_attributes(SAFETY_HEADERS)
    values = {a: sent[n] for a, n in zip(names, SAFETY_HEADERS, strict=True) if n in sent}
    msg.attributes["envoy.filters.http.ext_proc"].update(values)
    return msg


def response_msgs(*texts: str) -> list[ext.ProcessingRequest]:
    frames = b"".join(
        encode_frame(
            inference_pb2.GenerateResponse(delta=inference_pb2.Delta(text=t)).SerializeToString()
        )
        for t in texts
    )
    frames += encode_frame(
        inference_pb2.GenerateResponse(
            final=inference_pb2.Final(finish_reason=inference_pb2.FinishReason.FINISH_REASON_STOP)
        ).SerializeToString()
    )
    # Cut the body at arbitrary places, as Envoy's STREAMED mode may.
    cuts = range(0, len(frames), 7)
    return [ext.ProcessingRequest(response_body=ext.HttpBody(body=frames[c : c + 7])) for c in cuts]


async def run(requests: list[ext.ProcessingRequest]) -> list[ext.ProcessingResponse]:
    async def gen():
        for r in requests:
            yield r

    return [r async for r in SafetyExtProc(CFG).Process(gen(), None)]


async def test_extproc_redacts_prompt_and_scrubs_streamed_response():
    req = inference_pb2.GenerateRequest(prompt="write to bob@example.com", model="small")
    out = await run(
        [headers_msg(), body_msg(req), *response_msgs("mail ali", "ce@exam", "ple.org")]
    )
    assert out[0].HasField("request_headers")
    new_req = inference_pb2.GenerateRequest.FromString(
        single_message(out[1].request_body.response.body_mutation.body)
    )
    assert new_req.prompt == "write to [EMAIL]" and new_req.model == "small"
    body = b"".join(r.response_body.response.body_mutation.body for r in out[2:])
    msgs = [inference_pb2.GenerateResponse.FromString(m) for m in FrameDecoder().feed(body)]
    text = "".join(m.delta.text for m in msgs if m.HasField("delta"))
    assert text == "mail [EMAIL]"
    final = msgs[-1].final
    assert [(f.type, f.action, f.count) for f in final.safety.findings] == [("EMAIL", "redact", 1)]


async def test_extproc_rejects_per_tenant_with_an_immediate_error():
    req = inference_pb2.GenerateRequest(prompt="my card 4111 1111 1111 1111", model="small")
    out = await run([headers_msg("strict"), body_msg(req)])
    ir = out[1].immediate_response
    assert ir.grpc_status.status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert b"prompt contains CREDIT_CARD" in ir.body
    assert ir.details == "switchyard_safety_invalid_argument"


async def test_extproc_clean_prompt_passes_without_mutation():
    req = inference_pb2.GenerateRequest(prompt="hello", model="small")
    out = await run([headers_msg(), body_msg(req)])
    assert not out[1].request_body.response.HasField("body_mutation")


async def test_a_grpc_turn_without_a_headers_message_gets_its_tenants_policy() -> None:
    req = inference_pb2.GenerateRequest(prompt="my card 4111 1111 1111 1111", model="small")
    out = await run([attributed_body_msg(req, "strict")])
    ir = out[0].immediate_response
    assert ir.grpc_status.status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert b"prompt contains CREDIT_CARD" in ir.body


async def test_a_grpc_turn_without_a_headers_message_is_redacted_and_scrubbed() -> None:
    req = inference_pb2.GenerateRequest(prompt="write to bob@example.com", model="small")
    out = await run([attributed_body_msg(req), *response_msgs("mail ali", "ce@exam", "ple.org")])
    answer = out[0].request_body.response
    assert (
        inference_pb2.GenerateRequest.FromString(single_message(answer.body_mutation.body)).prompt
        == "write to [EMAIL]"
    )
    # Its headers went on before the body: no header mutation (Envoy dropped content-length).
    assert not answer.HasField("header_mutation")
    body = b"".join(r.response_body.response.body_mutation.body for r in out[1:])
    msgs = [inference_pb2.GenerateResponse.FromString(m) for m in FrameDecoder().feed(body)]
    assert "".join(m.delta.text for m in msgs if m.HasField("delta")) == "mail [EMAIL]"


async def test_extproc_fails_a_stream_it_cannot_read():
    bad = ext.ProcessingRequest(response_body=ext.HttpBody(body=b"\x01\x00\x00\x00\x01x"))
    out = await run([headers_msg(), bad])
    assert out[1].immediate_response.grpc_status.status == grpc.StatusCode.INTERNAL.value[0]


def http_headers_msg(tenant: str = "", stream: bool = True) -> ext.ProcessingRequest:
    from services.openai.request import Wire

    msg = headers_msg(tenant)
    wire = Wire(api="chat", stream=stream, include_usage=False, id="chatcmpl-1", created=1)
    msg.request_headers.headers.headers.add(key=h.OPENAI, raw_value=wire.encode().encode())
    return msg


async def test_an_openai_turn_refused_by_the_prompt_policy_is_an_http_error():
    import json

    req = inference_pb2.GenerateRequest(prompt="my card 4111 1111 1111 1111", model="small")
    out = await run([http_headers_msg("strict"), body_msg(req)])
    ir = out[1].immediate_response
    assert ir.status.code == 400 and not ir.HasField("grpc_status")
    assert "prompt contains CREDIT_CARD" in json.loads(ir.body)["error"]["message"]


async def test_an_openai_turn_is_scrubbed_and_answered_as_sse():
    req = inference_pb2.GenerateRequest(prompt="hi", model="small")
    engine_headers = ext.ProcessingRequest()
    for k, v in ((":status", "200"), ("content-type", "application/grpc")):
        engine_headers.response_headers.headers.headers.add(key=k, raw_value=v.encode())
    out = await run(
        [
            http_headers_msg(),
            body_msg(req),
            engine_headers,
            *response_msgs("mail ali", "ce@exam", "ple.org"),
        ]
    )
    assert out[2].HasField("response_headers")
    sse = b"".join(
        r.response_body.response.body_mutation.streamed_response.body
        for r in out[3:]
        if r.HasField("response_body")
    ).decode()
    assert "alice@example.org" not in sse and "[EMAIL]" in sse
    assert sse.endswith("data: [DONE]\n\n")


async def test_a_local_reply_the_router_wrote_passes_untouched():
    # No request reached this filter (the router answered first): its reply is not an engine's.
    out = await run([ext.ProcessingRequest(response_body=ext.HttpBody(body=b'{"error": {}}'))])
    assert not out[0].response_body.response.HasField("body_mutation")
