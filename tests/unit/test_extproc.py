"""The router's ext_proc answers, without Envoy: framing, header mutations, immediate errors."""

import struct

import grpc
import pytest

from services.common import headers as h
from services.common.errors import InvalidArgument, Unavailable, Unimplemented
from services.common.extproc import immediate_error
from services.common.frames import single_message
from services.router.auth.config import AuthSection
from services.router.auth.principal import Principal
from services.router.extproc import ExtProcService, identify
from services.router.routing import Limits
from services.router.tenancy.admission import Admission, QuotaSection
from services.router.tenancy.ledger import MemoryLedger
from services.router.tenancy.policy import PolicyStore, TenantsSection
from switchyard.v1 import inference_pb2

ACME = Principal(tenant="acme", tier="premium", priority=10)


def admission(tmp_path=None, **policies):
    """A real Admission over an in-memory ledger; `policies`: tenant → TenantPolicy fields."""
    cfg = TenantsSection.model_validate(
        {"policies": policies, **({"file": tmp_path / "tenants.json"} if tmp_path else {})}
    )
    return Admission(
        QuotaSection.model_validate({}),
        PolicyStore(cfg),
        AuthSection.model_validate({}).tiers,
        MemoryLedger(),
        "router-test",
    )


def service(routing, adm=None):
    return ExtProcService(routing, auth=None, admission=adm or admission())


def frame(msg: bytes, compressed: int = 0) -> bytes:
    return struct.pack(">BI", compressed, len(msg)) + msg


def test_single_message_unframes_one_message():
    assert single_message(frame(b"abc")) == b"abc"
    with pytest.raises(InvalidArgument, match="not a gRPC message"):
        single_message(b"\x00\x00")
    with pytest.raises(InvalidArgument, match="exactly one GenerateRequest"):
        single_message(frame(b"abc") + frame(b"def"))
    with pytest.raises(Unimplemented, match="compressed"):
        single_message(frame(b"abc", compressed=1))


def test_immediate_error_carries_grpc_status_and_message():
    resp = immediate_error(Unavailable("pool p has no engines"), "router")
    ir = resp.immediate_response
    assert ir.grpc_status.status == grpc.StatusCode.UNAVAILABLE.value[0]
    assert ir.body == b"pool p has no engines"


class FakeEngine:
    def __init__(self, engine_id, address, pool="p"):
        self.engine_id, self.address, self.pool = engine_id, address, pool


class FakeDecision:
    def __init__(self):
        self.engine = FakeEngine("e1", "127.0.0.1:1")
        self.fallbacks = [FakeEngine("e2", "127.0.0.1:2")]


class FakeRouted:
    model = "small"
    priority = 10
    prompt_tokens = 12
    output_bound = 100
    resumed = False
    capped = 0
    cache_salt = "tenant:acme"
    routed_as = route_reason = degraded_reason = ""
    prompt_outcome = ""
    handoff = None


class FakeRouting:
    """Records what it was asked; answers with a fixed decision or an error."""

    def __init__(self, error=None, limits=None):
        self.error = error
        self.calls = []
        self.limits = limits or Limits()

    async def prepare(self, req, *, principal=None, tenant="", session_id="", **kw):
        self.calls.append((req, principal.tenant if principal else tenant, session_id))
        if self.error:
            raise self.error
        routed = FakeRouted()
        routed.cache_salt = kw.get("cache_salt", "")
        routed.capped = 0 if req.sampling.HasField("max_tokens") else kw["default_max_tokens"]
        return routed

    async def pick(self, routed, commit=True):
        return FakeDecision()


HEADERS = {":path": "/switchyard.v1.Inference/Generate", h.SESSION_ID: "s1"}


async def test_decide_sets_pool_endpoint_and_clears_route_cache():
    routing = FakeRouting()
    body = frame(inference_pb2.GenerateRequest(prompt="hi", model="small").SerializeToString())
    resp = await service(routing).decide(HEADERS, body, ACME)
    common = resp.request_body.response
    assert common.clear_route_cache
    assert not common.HasField("body_mutation"), "the body is left alone when the model matches"
    got = {o.header.key: o.header.raw_value.decode() for o in common.header_mutation.set_headers}
    assert got[h.POOL] == "p"
    assert got[h.ENDPOINT] == "127.0.0.1:1,127.0.0.1:2"
    assert got[h.ENGINE] == "e1"
    assert got[h.PRIORITY] == "10"  # the turn's priority, for the engine
    assert not common.header_mutation.remove_headers, "nothing to remove when the body stays"
    req, tenant, session = routing.calls[0]
    assert (req.prompt, tenant, session) == ("hi", "acme", "s1")


async def test_a_redacted_prompt_goes_on_as_the_router_routed_it():
    class Redacting(FakeRouting):
        async def prepare(self, req, **kw):  # as the prompt policy does, in place
            routed = await super().prepare(req, **kw)
            req.prompt = req.prompt.replace("bob@example.com", "[EMAIL]")
            routed.prompt_outcome = "redacted"
            return routed

    body = frame(
        inference_pb2.GenerateRequest(
            prompt="to bob@example.com", model="small"
        ).SerializeToString()
    )
    common = (await service(Redacting()).decide(HEADERS, body, ACME)).request_body.response
    sent = inference_pb2.GenerateRequest.FromString(common.body_mutation.body[5:])
    assert sent.prompt == "to [EMAIL]" and sent.model == "small"
    got = {o.header.key: o.header.raw_value.decode() for o in common.header_mutation.set_headers}
    assert got[h.MODEL] == "small"  # the safety filter's policy is the served model's


async def test_the_engine_gets_the_ids_the_turn_was_routed_on():
    ids = inference_pb2.PromptTokens(ids=b"\x01\0\0\0\x02\0\0\0", prompt=2, tokenizer="d1")

    class Tokenizing(FakeRouting):
        async def prepare(self, req, **kw):
            routed = await super().prepare(req, **kw)
            routed.handoff = ids
            return routed

    body = frame(inference_pb2.GenerateRequest(prompt="hi", model="small").SerializeToString())
    common = (await service(Tokenizing()).decide(HEADERS, body, ACME)).request_body.response
    sent = inference_pb2.GenerateRequest.FromString(single_message(common.body_mutation.body))
    assert sent.prompt_tokens == ids and sent.prompt == "hi"


async def test_a_clients_prompt_tokens_never_reach_an_engine():
    forged = inference_pb2.PromptTokens(ids=b"\x07\0\0\0", prompt=1, tokenizer="d1")
    req = inference_pb2.GenerateRequest(prompt="hi", model="small", prompt_tokens=forged)
    common = await service(FakeRouting()).decide(HEADERS, frame(req.SerializeToString()), ACME)
    body = common.request_body.response.body_mutation.body
    sent = inference_pb2.GenerateRequest.FromString(single_message(body))
    assert not sent.HasField("prompt_tokens") and sent.prompt == "hi"


@pytest.mark.parametrize(
    ("headers", "body", "code", "text"),
    [
        (
            HEADERS,
            frame(b"\x12\x02\xff\xfe"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "prompt is not valid UTF-8",
        ),
        (
            {":path": "/other.Svc/Call"},
            frame(b""),
            grpc.StatusCode.UNIMPLEMENTED,
            "/other.Svc/Call is not served by the mesh",
        ),
    ],
)
async def test_decide_answers_bad_turns_with_an_immediate_error(headers, body, code, text):
    resp = await service(FakeRouting()).decide(headers, body, ACME)
    assert resp.immediate_response.grpc_status.status == code.value[0]
    assert text in resp.immediate_response.body.decode()


async def test_routing_errors_become_immediate_errors():
    routing = FakeRouting(error=Unavailable("pool p: no engine can serve"))
    body = frame(inference_pb2.GenerateRequest(prompt="hi").SerializeToString())
    resp = await service(routing).decide(HEADERS, body, ACME)
    assert resp.immediate_response.grpc_status.status == grpc.StatusCode.UNAVAILABLE.value[0]


async def test_an_unexpected_failure_is_internal_with_a_message_not_a_reset():
    routing = FakeRouting(error=KeyError("chat_template"))
    body = frame(inference_pb2.GenerateRequest(prompt="hi").SerializeToString())
    resp = await service(routing).decide(HEADERS, body, ACME)
    ir = resp.immediate_response
    assert ir.grpc_status.status == grpc.StatusCode.INTERNAL.value[0]
    assert ir.body.decode() == "the router failed to route the turn (KeyError)"


async def test_a_body_over_the_limit_is_refused_before_it_is_decoded():
    routing = FakeRouting(limits=Limits(max_prompt_bytes=1024))
    body = frame(inference_pb2.GenerateRequest(prompt="x" * 2000).SerializeToString())
    resp = await service(routing).decide(HEADERS, body, ACME)
    ir = resp.immediate_response
    assert ir.grpc_status.status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "over the mesh's limit of 1024 bytes" in ir.body.decode()
    assert "router.max_prompt_bytes" in ir.body.decode()
    assert routing.calls == []


async def test_alias_is_rewritten_to_the_served_model_in_the_body():
    body = frame(inference_pb2.GenerateRequest(prompt="hi", model="chat").SerializeToString())
    resp = await service(FakeRouting()).decide(HEADERS, body, ACME)
    new_body = resp.request_body.response.body_mutation.body
    req = inference_pb2.GenerateRequest.FromString(single_message(new_body))
    assert (req.model, req.prompt) == ("small", "hi")
    # A client's content-length no longer matches the body: Envoy must not see it.
    assert list(resp.request_body.response.header_mutation.remove_headers) == ["content-length"]


def test_identify_sets_the_principal_and_drops_what_the_client_claimed():
    claimed = {
        ":path": "/switchyard.v1.Inference/Generate",
        "authorization": "Bearer sy-0123456789ab.secret",
        "x-switchyard-tenant": "someone-else",
        "x-switchyard-pool": "h100-large",
        "x-switchyard-whatever": "1",
        "x-session-id": "s1",
    }
    m = identify(Principal(tenant="acme", tier="free", priority=-10), claimed)
    got = {o.header.key: o.header.raw_value.decode() for o in m.set_headers}
    assert got == {h.TENANT: "acme", h.TIER: "free"}
    assert set(m.remove_headers) == {
        "authorization",
        "x-switchyard-pool",
        "x-switchyard-whatever",
    }  # the tenant and tier are overwritten, not removed


class FakeAuth:
    def __init__(self, error=None):
        self.error = error

    async def authenticate(self, authorization):
        if self.error:
            raise self.error
        return ACME


async def _process(svc, *messages):

    async def requests():
        for m in messages:
            yield m

    return [r async for r in svc.Process(requests(), None)]


def _headers_msg(**headers):
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

    return ext.ProcessingRequest(
        request_headers=ext.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()
                ]
            )
        )
    )


async def test_a_caller_without_valid_credentials_is_refused_at_the_headers():
    from services.common.errors import Unauthenticated

    svc = service(FakeRouting(), None)
    svc._auth = FakeAuth(Unauthenticated("the API key is not valid"))
    [answer] = await _process(svc, _headers_msg(**{":path": "/x"}))
    ir = answer.immediate_response
    assert ir.grpc_status.status == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert ir.body == b"the API key is not valid"


async def test_an_authenticated_turn_is_routed_as_its_principal():
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

    routing = FakeRouting()
    svc = service(routing)
    svc._auth = FakeAuth()
    body = frame(inference_pb2.GenerateRequest(prompt="hi", model="small").SerializeToString())
    head, routed = await _process(
        svc,
        _headers_msg(**{":path": "/switchyard.v1.Inference/Generate"}),
        ext.ProcessingRequest(request_body=ext.HttpBody(body=body, end_of_stream=True)),
    )
    set_ = {o.header.key for o in head.request_headers.response.header_mutation.set_headers}
    assert set_ == {h.TENANT, h.TIER}
    assert routed.request_body.response.clear_route_cache
    assert routing.calls[0][1] == "acme"
    # Envoy ended the stream (the turn is over) before any engine reported taking it: the
    # turn is no longer the router's to count (its reservation goes back after a grace).
    res_id = _set(routed)[h.RESERVATION]
    assert res_id in svc._admission._unaccepted_ends


@pytest.mark.parametrize(
    "headers",
    [
        {f"x-extra-{i}": "v" for i in range(101)},  # too many
        {"x-big": "x" * (64 * 1024)},  # too large
    ],
)
async def test_request_headers_over_the_limits_are_resource_exhausted(headers):
    svc = service(FakeRouting())
    svc._auth = FakeAuth()
    [answer] = await _process(svc, _headers_msg(**{":path": "/x"}, **headers))
    ir = answer.immediate_response
    assert ir.grpc_status.status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert b"over the mesh's limits of 64 KiB and 100 headers" in ir.body


async def test_request_headers_under_the_limits_pass():
    svc = service(FakeRouting())
    svc._auth = FakeAuth()
    headers = {f"x-extra-{i}": "v" for i in range(90)} | {"x-big": "x" * 60 * 1024}
    [answer] = await _process(svc, _headers_msg(**{":path": "/x"}, **headers))
    assert answer.HasField("request_headers")


def _set(resp):
    m = resp.request_body.response.header_mutation
    return {o.header.key: o.header.raw_value.decode() for o in m.set_headers}


async def test_an_admitted_turn_carries_its_reservation_salt_and_what_is_left():
    adm = admission(acme={"quotas": {"tokens_per_minute": 1000}})
    body = frame(inference_pb2.GenerateRequest(prompt="hi").SerializeToString())
    got = _set(await service(FakeRouting(), adm).decide(HEADERS, body, ACME))
    assert got[h.RESERVATION].startswith("router-test-") and got[h.RESERVATION].endswith(".m")
    assert got[h.CACHE_SALT] == "tenant:acme"
    assert got[h.QUOTA_REMAINING] == "tokens_per_minute=888"  # 1000 - (12 prompt + 100)


async def test_a_turn_over_quota_is_resource_exhausted_with_retry_info_and_what_is_left():
    import base64

    from google.rpc import error_details_pb2, status_pb2

    adm = admission(acme={"quotas": {"tokens_per_minute": 150}})
    svc = service(FakeRouting(), adm)
    body = frame(inference_pb2.GenerateRequest(prompt="hi").SerializeToString())
    assert h.RESERVATION in _set(await svc.decide(HEADERS, body, ACME))
    ir = (await svc.decide(HEADERS, body, ACME)).immediate_response
    assert ir.grpc_status.status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "tenant acme is over its tokens_per_minute quota (150)" in ir.body.decode()
    extra = {o.header.key: o.header.raw_value.decode() for o in ir.headers.set_headers}
    assert extra[h.QUOTA_REMAINING] == "tokens_per_minute=38"
    status = status_pb2.Status.FromString(base64.b64decode(extra["grpc-status-details-bin"]))
    assert status.message == ir.body.decode()  # what grpc-status's from_call checks
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    # 74 tokens short at 150 per minute: about 30 s.
    assert 29 <= info.retry_delay.ToTimedelta().total_seconds() <= 31


async def test_a_turn_without_max_tokens_gets_its_tenants_default_cap_in_the_body():
    adm = admission(acme={"quotas": {"default_max_tokens": 64}})
    body = frame(inference_pb2.GenerateRequest(prompt="hi", model="small").SerializeToString())
    resp = await service(FakeRouting(), adm).decide(HEADERS, body, ACME)
    req = inference_pb2.GenerateRequest.FromString(
        single_message(resp.request_body.response.body_mutation.body)
    )
    assert req.sampling.max_tokens == 64


async def test_a_tenant_in_a_cache_group_shares_its_groups_salt():
    adm = admission(acme={"cache_group": "partners"})
    body = frame(inference_pb2.GenerateRequest(prompt="hi").SerializeToString())
    assert _set(await service(FakeRouting(), adm).decide(HEADERS, body, ACME))[h.CACHE_SALT] == (
        "group:partners"
    )


HTTP_HEADERS = {":path": "/v1/chat/completions", ":method": "POST", h.SESSION_ID: "s1"}


async def test_an_openai_body_is_replaced_by_its_generate_request_and_the_turn_marked():
    import json

    from services.openai.request import Wire

    routing = FakeRouting()
    body = json.dumps(
        {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ).encode()
    resp = await service(routing).decide(HTTP_HEADERS, body, ACME)
    common = resp.request_body.response
    sent = inference_pb2.GenerateRequest.FromString(single_message(common.body_mutation.body))
    assert sent.model == "small"  # the alias resolved, as for gRPC
    assert [(m.role, m.content) for m in sent.conversation.messages] == [("user", "hi")]
    headers = {
        o.header.key: o.header.raw_value.decode() for o in common.header_mutation.set_headers
    }
    wire = Wire.decode(headers[h.OPENAI])
    assert wire.api == "chat" and wire.stream and wire.model == "small"
    assert headers[h.POOL] == "p" and "content-length" in common.header_mutation.remove_headers
    assert routing.calls[0][2] == "s1"  # x-session-id, as over gRPC


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        (b"{oops", 400, "invalid_request_error"),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "n": 4}',
            400,
            "invalid_request_error",
        ),
    ],
)
async def test_an_openai_turn_refused_is_an_openai_error(body, status, error_type):
    import json

    resp = await service(FakeRouting()).decide(HTTP_HEADERS, body, ACME)
    ir = resp.immediate_response
    assert ir.status.code == status and not ir.HasField("grpc_status")
    assert json.loads(ir.body)["error"]["type"] == error_type
    assert ir.details.startswith("switchyard_router_")


async def test_an_unknown_model_over_http_is_404():
    import json

    from services.common.errors import NotFound

    routing = FakeRouting(error=NotFound("model 'gpt-17' is unknown"))
    body = b'{"model": "gpt-17", "prompt": "hi"}'
    headers = HTTP_HEADERS | {":path": "/v1/completions"}
    resp = await service(routing).decide(headers, body, ACME)
    assert resp.immediate_response.status.code == 404
    assert "gpt-17" in json.loads(resp.immediate_response.body)["error"]["message"]
