"""The prompt policy (allow / redact / reject, applied by the router) and the safety ext_proc's
answers on the response path, without Envoy."""

from __future__ import annotations

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from services.common import headers as h
from services.common.config import parse_config
from services.common.errors import ConfigError, InvalidArgument, PermissionDenied
from services.common.extproc import header_attributes
from services.common.frames import FrameDecoder, encode_frame
from services.router.xds.builder import SAFETY_HEADERS
from services.safety.config import SafetyConfig
from services.safety.extproc import SafetyExtProc
from services.safety.prompt import OFFLOAD_CHARS, PromptPolicy, check_prompt
from switchyard.v1 import inference_pb2

CFG = parse_config(
    {
        "default": {"prompt": "redact", "actions": {"IPV4": "allow", "SECRET_PROJECT": "block"}},
        "tenants": {"strict": {"prompt": "reject"}, "open": {"prompt": "allow"}},
        "models": {"large": {"actions": {"EMAIL": "allow"}}},
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


# -- the prompt policy as the router applies it ------------------------------------------------


async def test_the_policy_counts_each_outcome_and_checks_long_prompts_off_the_loop():
    from services.safety import metrics as m

    def count(outcome: str) -> float:
        return m.PROMPTS.labels(outcome)._value.get()

    policy = PromptPolicy(CFG)
    before = {o: count(o) for o in ("passed", "redacted", "rejected", "denied")}
    long = inference_pb2.GenerateRequest(prompt="word " * (OFFLOAD_CHARS // 5) + "bob@example.com")
    result = await policy.apply(long, "", "small")
    assert result.outcome == "redacted" and long.prompt.endswith("[EMAIL]")
    assert (
        await policy.apply(inference_pb2.GenerateRequest(prompt="hi"), "", "small")
    ).outcome == ("passed")
    with pytest.raises(InvalidArgument):
        await policy.apply(inference_pb2.GenerateRequest(prompt="bob@example.com"), "strict", "s")
    with pytest.raises(PermissionDenied):
        await policy.apply(inference_pb2.GenerateRequest(prompt="project nightingale"), "", "s")
    after = {o: count(o) for o in before}
    assert {o: after[o] - before[o] for o in before} == {
        "passed": 1,
        "redacted": 1,
        "rejected": 1,
        "denied": 1,
    }


# -- the ext_proc exchange: the response path only --------------------------------------------


def response_headers_msg(
    tenant: str = "", model: str = "small", **more: str
) -> ext.ProcessingRequest:
    """The filter's first message, as Envoy sends it: the engine's response headers, with the
    request headers the filter reads as attributes (an absent header is absent; no model: the
    router did not send the turn on)."""
    msg = ext.ProcessingRequest()
    for k, v in ((":status", "200"), ("content-type", "application/grpc")):
        msg.response_headers.headers.headers.add(key=k, raw_value=v.encode())
    sent = {h.TENANT: tenant, h.MODEL: model, **{getattr(h, k): v for k, v in more.items()}}
    names = header_attributes(SAFETY_HEADERS)
    values = {a: sent[n] for a, n in zip(names, SAFETY_HEADERS, strict=True) if sent.get(n)}
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


def scrubbed(out: list[ext.ProcessingResponse]) -> list[inference_pb2.GenerateResponse]:
    body = b"".join(r.response_body.response.body_mutation.body for r in out)
    return [inference_pb2.GenerateResponse.FromString(m) for m in FrameDecoder().feed(body)]


async def test_a_grpc_turn_is_scrubbed_with_its_tenant_and_models_policy():
    out = await run([response_headers_msg(), *response_msgs("mail ali", "ce@exam", "ple.org")])
    assert out[0].HasField("response_headers")
    msgs = scrubbed(out[1:])
    assert "".join(m.delta.text for m in msgs if m.HasField("delta")) == "mail [EMAIL]"
    final = msgs[-1].final
    assert [(f.type, f.action, f.count) for f in final.safety.findings] == [("EMAIL", "redact", 1)]
    # The model the router served it with (an attribute) chooses the policy: "large" allows it.
    out = await run([response_headers_msg(model="large"), *response_msgs("mail ali", "ce@ex.org")])
    msgs = scrubbed(out[1:])
    assert "".join(m.delta.text for m in msgs if m.HasField("delta")) == "mail alice@ex.org"


async def test_extproc_fails_a_stream_it_cannot_read():
    bad = ext.ProcessingRequest(response_body=ext.HttpBody(body=b"\x01\x00\x00\x00\x01x"))
    out = await run([response_headers_msg(), bad])
    assert out[1].immediate_response.grpc_status.status == grpc.StatusCode.INTERNAL.value[0]


async def test_an_openai_turn_is_scrubbed_and_answered_as_sse():
    from services.openai.request import Wire

    wire = Wire(api="chat", stream=True, include_usage=False, id="chatcmpl-1", created=1)
    out = await run(
        [
            response_headers_msg(OPENAI=wire.encode()),
            *response_msgs("mail ali", "ce@exam", "ple.org"),
        ]
    )
    assert out[0].HasField("response_headers")
    sse = b"".join(
        r.response_body.response.body_mutation.streamed_response.body
        for r in out[1:]
        if r.HasField("response_body")
    ).decode()
    assert "alice@example.org" not in sse and "[EMAIL]" in sse
    assert sse.endswith("data: [DONE]\n\n")


async def test_a_local_reply_the_router_wrote_passes_untouched():
    # The router answered the turn itself (no model attribute): its reply is not an engine's.
    headers = response_headers_msg(model="")
    body = ext.ProcessingRequest(response_body=ext.HttpBody(body=b'{"error": {}}'))
    out = await run([headers, body])
    assert out[0].HasField("response_headers")
    assert not out[0].response_headers.HasField("response")
    assert not out[1].response_body.response.HasField("body_mutation")
