"""Envoy's ext_proc for the router: one exchange per turn, never in the token stream.

Envoy sends the request headers, then the whole buffered request body. The router decodes
the GenerateRequest, applies the prompt policy (a redacted prompt replaces the body: the engine
prefills what the turn was routed on), picks the engine, and answers the body with header
mutations naming the pool (the route), the endpoint (Envoy's override_host load balancer) and
the served model (the safety filter's policy), clearing the route cache so the route is chosen
again with them.

An OpenAI HTTP turn (`/v1/chat/completions`, `/v1/completions`) takes the same path: its JSON
body is translated to a GenerateRequest (`services/openai/request.py`) and replaced by it, and
the turn is marked with the `x-switchyard-openai` header, which selects the pool's HTTP route
(gRPC wire headers toward the engine) and tells the safety filter how to answer; its errors are
OpenAI error objects with the matching HTTP status. `GET /v1/models` is answered here.

Anything that cannot be routed is answered with an immediate error (INVALID_ARGUMENT,
NOT_FOUND, UNAVAILABLE…) and never reaches an engine; so is a turn the router fails on
unexpectedly (INTERNAL, logged), never a bare reset that a client would retry. Nothing here
blocks the event loop for long: a body over the size limit is refused before it is decoded,
and long prompts are checked and tokenized in a worker thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from services.common import headers as h
from services.common.errors import (
    Internal,
    InvalidArgument,
    NotFound,
    SwitchyardError,
    Unimplemented,
)
from services.common.extproc import (
    GENERATE_PATH,
    LONG_BODY_BYTES,
    LONG_BODY_SECONDS,
    extend_timeout,
    grpc_timeout,
    header_map,
    immediate_error,
    replace_request_body,
    set_header,
    set_headers,
)
from services.common.frames import encode_frame, single_message
from services.common.protoutil import decode_request
from services.common.tracing import extract
from services.openai import errors as openai_errors
from services.openai import models as openai_models
from services.openai import request as openai_request
from services.openai.request import Wire
from services.router.auth.authenticator import Authenticator
from services.router.auth.principal import Principal
from services.router.response_cache import ResponseCache
from services.router.routing import RoutingService, check_request_headers, check_request_size
from services.router.scheduling.interfaces import RoutingRequest
from services.router.scheduling.scheduler import Decision
from services.router.tenancy.admission import Admission, QuotaExceeded, Ticket
from services.router.tenancy.flow import FlowControl, Shed
from services.router.tenancy.policy import TenantPolicy, cache_salt
from switchyard.v1 import inference_pb2

log = logging.getLogger(__name__)


PICK_SPAN = "switchyard.router.pick"
# Asked of Envoy on top of the longest a turn may wait for a saturated pool: time to answer.
EXTENSION_MARGIN_SECONDS = 2.0


def _annotate(span: trace.Span, decision: Decision, routed: RoutingRequest) -> None:
    """The pick's outcome and every candidate's scores, on the span (one call: cheaper)."""
    span.set_attributes(
        {
            "switchyard.pool": decision.pool,
            "switchyard.engine": decision.engine.engine_id,
            "switchyard.endpoint": decision.engine.address,
            "switchyard.decision.reason": decision.reason,
            "switchyard.fallbacks": [f.engine_id for f in decision.fallbacks],
            "gen_ai.response.model": routed.model,
            "gen_ai.usage.input_tokens": decision.prompt_tokens,
            **decision.candidate_attributes(),
        }
    )
    if routed.routed_as:
        span.set_attributes(
            {
                "switchyard.routed_as": routed.routed_as,
                "switchyard.route_reason": routed.route_reason,
            }
        )
    if routed.degraded_reason:
        span.set_attribute("switchyard.degraded_reason", routed.degraded_reason)
    if routed.model_version:
        span.set_attributes(
            {
                "switchyard.model_version": routed.model_version,
                "switchyard.version_reason": routed.version_reason,
            }
        )


def _prompt_attributes(routed: RoutingRequest) -> dict[str, str | int]:
    """What the prompt policy did, for the pick span (as the safety filter's scan span shows
    the response's findings)."""
    out: dict[str, str | int] = {"switchyard.safety.prompt": routed.prompt_outcome}
    for entity_type, n in sorted(routed.prompt_findings.items()):
        out[f"switchyard.safety.prompt.findings.{entity_type}"] = n
        out[f"switchyard.safety.prompt.action.{entity_type}"] = routed.prompt_actions[entity_type]
    return out


def _onward(turn: _Admitted, mutation: ext.HeaderMutation) -> ext.ProcessingResponse:
    """Envoy's answer sending a turn on (to an engine, or to the cache replay) with `mutation`;
    the body rewritten when the upstream must see another one."""
    req, routed = turn.req, turn.routed
    body_mutation = None
    set_headers(mutation, [(h.MODEL, routed.model)])
    if turn.wire is not None:
        # An HTTP turn: the upstream gets the GenerateRequest (the HTTP routes give it gRPC's
        # headers), the safety filter the Wire.
        set_headers(mutation, [(h.OPENAI, turn.wire.serving(routed.model).encode())])
    redacted = routed.prompt_outcome == "redacted"
    handoff = routed.handoff is not None or req.HasField("prompt_tokens")
    if req.model != routed.model or routed.capped or turn.wire is not None or redacted or handoff:
        # An alias or "auto": the engine sees the served model name it answers to; a turn
        # without max_tokens gets its tenant's default cap (what its quota reserved); a prompt
        # the policy redacted goes on redacted (`req` was rewritten in place); the engine gets
        # the ids the turn was routed on, and never a client's.
        req.model = routed.model
        if routed.capped:
            req.sampling.max_tokens = routed.capped
        if routed.handoff is not None:
            req.prompt_tokens.CopyFrom(routed.handoff)
        else:
            req.ClearField("prompt_tokens")
        body_mutation = replace_request_body(encode_frame(req.SerializeToString()), mutation)
    return ext.ProcessingResponse(
        request_body=ext.BodyResponse(
            response=ext.CommonResponse(
                header_mutation=mutation, body_mutation=body_mutation, clear_route_cache=True
            )
        )
    )


def identify(principal: Principal, headers: dict[str, str]) -> ext.HeaderMutation:
    """The headers answer once the caller is known: the mesh's own headers set from the
    principal, and every client copy of an internal header and the credential removed (Envoy
    strips the known ones at the listener already; engines never see an API key)."""
    mutation = ext.HeaderMutation(
        remove_headers=[
            k
            for k in headers
            if (k.startswith(h.INTERNAL_PREFIX) and k not in (h.TENANT, h.TIER))
            or k == h.AUTHORIZATION
        ],
    )
    set_headers(mutation, [(h.TENANT, principal.tenant), (h.TIER, principal.tier)])
    return mutation


@dataclass
class _Admitted:
    """A turn past its quota check, about to be (queued and) routed."""

    req: inference_pb2.GenerateRequest
    routed: RoutingRequest
    ticket: Ticket
    policy: TenantPolicy
    wire: Wire | None = None  # an OpenAI HTTP turn: how the safety filter answers it
    sent: bool = False  # routed: Envoy sends it on to an engine
    cache_store: str = ""  # a cacheable miss: its entry ("key;ttl") for the safety filter


class ExtProcService(ext_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(
        self,
        routing: RoutingService,
        auth: Authenticator,
        admission: Admission,
        tracer: trace.Tracer | None = None,
        flow: FlowControl | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self._routing = routing
        self._auth = auth
        self._admission = admission
        self._cache = cache  # the response cache; None: off
        self._flow = flow  # fair share under saturation; None: turns are never held
        self._tracer = tracer  # None: tracing off, nothing extracted or recorded per turn

    def add_to_server(self, server: grpc.aio.Server) -> None:
        ext_grpc.add_ExternalProcessorServicer_to_server(self, server)

    async def decide(
        self,
        headers: dict[str, str],
        body: bytes,
        principal: Principal,
        span: trace.Span | None = None,
        max_wait: float | None = None,
    ) -> ext.ProcessingResponse:
        """The answer to a turn's buffered body: route headers, or an immediate error."""
        span = span or trace.INVALID_SPAN
        turn = await self.admit(headers, body, principal, span)
        if isinstance(turn, ext.ProcessingResponse):
            return turn
        return await self.route(turn, span, max_wait)

    def _decode(
        self, headers: dict[str, str], body: bytes
    ) -> tuple[inference_pb2.GenerateRequest, Wire | None]:
        """The turn a body asks for: a gRPC GenerateRequest, or an OpenAI request translated."""
        path = headers.get(":path", "")
        check_request_size(len(body), self._routing.limits)
        api = openai_request.api_of(path)
        if api is not None:
            wire, req = openai_request.translate(api, body)
            return req, wire
        if path != GENERATE_PATH:
            raise Unimplemented(f"{path or 'this method'} is not served by the mesh")
        return decode_request(inference_pb2.GenerateRequest, single_message(body)), None

    async def admit(
        self, headers: dict[str, str], body: bytes, principal: Principal, span: trace.Span
    ) -> _Admitted | ext.ProcessingResponse:
        """Decode, resolve and tokenize the turn, and reserve its quota; or an immediate error."""
        if span.is_recording():
            span.set_attributes(
                {
                    "switchyard.tenant": principal.tenant,
                    "switchyard.tier": principal.tier,
                    "switchyard.auth": principal.key_id.partition(":")[0] or "none",
                }
            )
        http = _is_http(headers)
        try:
            req, wire = self._decode(headers, body)
            if span.is_recording():
                span.set_attribute("gen_ai.request.model", req.model or "auto")
                if wire is not None:
                    span.set_attribute("switchyard.api", f"openai.{wire.api}")
            policy = self._admission.policies.get(principal.tenant)
            routed = await self._routing.prepare(
                req,
                principal=principal,
                session_id=headers.get(h.SESSION_ID, ""),
                cache_salt=cache_salt(principal.tenant, policy),
                default_max_tokens=Admission.default_max_tokens(principal, policy),
            )
            ticket = await self._admission.admit(
                principal,
                policy,
                prompt_tokens=routed.prompt_tokens,
                max_tokens=routed.output_bound,
                resumed=routed.resumed,
            )
        except Exception as e:
            return self._refused(e, span, http)
        if span.is_recording():
            if routed.prompt_outcome:
                span.set_attributes(_prompt_attributes(routed))
            span.set_attributes(
                {
                    "switchyard.quota.decision": ticket.decision,
                    "switchyard.quota.remaining": ticket.remaining,
                    "switchyard.quota.reserved": routed.output_bound
                    + (0 if routed.resumed else routed.prompt_tokens),
                }
            )
        return _Admitted(req, routed, ticket, policy, wire)

    def _refused(self, e: Exception, span: trace.Span, http: bool) -> ext.ProcessingResponse:
        if isinstance(e, SwitchyardError):
            span.set_status(Status(StatusCode.ERROR, f"{e.code.name}: {e.message}"))
            if span.is_recording() and isinstance(e, QuotaExceeded | Shed):
                span.set_attribute(
                    "switchyard.quota.decision", "over_quota" if isinstance(e, QuotaExceeded)
                    else "shed",
                )  # fmt: skip
            return _error(e, http)
        log.error("routing a turn failed", exc_info=e)
        span.set_status(Status(StatusCode.ERROR, f"INTERNAL: {e!r}"))
        return _error(Internal(f"the router failed to route the turn ({type(e).__name__})"), http)

    def would_wait(self, turn: _Admitted) -> bool:
        return self._flow is not None and self._flow.would_wait(turn.routed.pool)

    async def route(
        self, turn: _Admitted, span: trace.Span, max_wait: float | None = None
    ) -> ext.ProcessingResponse:
        """Wait for room in a saturated pool (fair share), pick the engine, answer Envoy."""
        routed, ticket = turn.routed, turn.ticket
        try:
            if self._flow is not None:
                let = await self._flow.admit(
                    routed.pool,
                    ticket.tenant,
                    priority=routed.priority,
                    weight=turn.policy.weight,
                    input_tokens=0 if routed.resumed else routed.prompt_tokens,
                    output_bound=routed.output_bound,
                    res_id=ticket.res_id,
                    max_wait=max_wait,
                )
                if span.is_recording():
                    span.set_attribute("switchyard.queue.wait_seconds", let.waited)
                try:
                    decision = await self._routing.pick(routed)
                finally:
                    let.picked()
            else:
                decision = await self._routing.pick(routed)
        except BaseException as e:
            await self._admission.release(ticket)
            if not isinstance(e, Exception):
                raise
            return self._refused(e, span, turn.wire is not None)
        turn.sent = True
        if span.is_recording():
            _annotate(span, decision, routed)
        endpoints = [decision.engine.address, *(f.address for f in decision.fallbacks)]
        mutation = ext.HeaderMutation()
        headers = [
            (h.POOL, decision.engine.pool),
            (h.ENDPOINT, h.endpoint_list(endpoints)),
            (h.ENGINE, decision.engine.engine_id),
            (h.PRIORITY, str(routed.priority)),
            (h.CACHE_SALT, routed.cache_salt),
            *ticket.headers,
        ]
        if routed.degraded_reason:
            headers.append((h.DEGRADED, routed.degraded_reason))
        if routed.routed_as:
            headers += [(h.ROUTED_AS, routed.routed_as), (h.ROUTE_REASON, routed.route_reason)]
        if turn.cache_store:
            headers.append((h.CACHE_STORE, turn.cache_store))
        set_headers(mutation, headers)
        return _onward(turn, mutation)

    async def cached(self, turn: _Admitted, span: trace.Span) -> ext.ProcessingResponse | None:
        """A cacheable turn: its stored answer, routed to the cache replay (a hit); or None,
        the turn marked for storing (a miss)."""
        assert self._cache is not None
        rr = turn.routed
        entry = self._cache.entry_for(rr.tenant, turn.policy, rr, turn.req)
        if entry is None:
            return None
        key, ttl = entry

        def usable(version: str) -> bool:
            if rr.model_version:  # a versioned model: the turn's arm only
                return version == rr.model_version
            return self._routing.serves(rr.pool, rr.model, version)

        stored = await self._cache.lookup(key, usable)
        if span.is_recording():
            span.set_attribute("switchyard.cache", "hit" if stored is not None else "miss")
        if stored is None:
            turn.cache_store = f"{key};{ttl:g}"
            return None
        await self._admission.release(turn.ticket)  # no engine runs it: nothing is charged
        if span.is_recording():
            span.set_attributes(
                {
                    "gen_ai.response.model": rr.model,
                    "switchyard.model_version": stored.final.served_by.model_version,
                }
            )
        mutation = ext.HeaderMutation(
            set_headers=[set_header(h.CACHE, h.CACHE_HIT), set_header(h.CACHE_KEY, key)]
        )
        return _onward(turn, mutation)

    async def _body(
        self,
        headers: dict[str, str],
        body: bytes,
        principal: Principal,
        span: trace.Span,
        sent: list[str],
    ) -> AsyncIterator[ext.ProcessingResponse]:
        """The answers to a turn's body: the decision, preceded by a request for more time
        when tokenizing a long prompt or waiting for a saturated pool may take longer than
        Envoy's message timeout (Envoy takes one such request per message). A turn sent on
        adds its reservation to `sent`."""
        started = time.monotonic()
        extended = 0.0
        if len(body) >= LONG_BODY_BYTES:
            extended = LONG_BODY_SECONDS  # tokenizing it takes a while
            yield extend_timeout(extended)
        turn = await self.admit(headers, body, principal, span)
        if isinstance(turn, ext.ProcessingResponse):
            yield turn
            return
        if self._cache is not None and (hit := await self.cached(turn, span)) is not None:
            yield hit
            return
        deadline = grpc_timeout(headers)
        # Never past the client's deadline (keeping a moment to start the turn), nor past the
        # time Envoy already granted.
        max_wait = None if deadline is None else deadline * 0.9 - (time.monotonic() - started)
        if extended:
            left = extended - (time.monotonic() - started) - EXTENSION_MARGIN_SECONDS
            max_wait = left if max_wait is None else min(max_wait, left)
        elif self._flow is not None and self.would_wait(turn):
            yield extend_timeout(self._flow.wait_limit(max_wait) + EXTENSION_MARGIN_SECONDS)
        answer = await self.route(turn, span, max_wait)
        if turn.sent:
            sent.append(turn.ticket.res_id)
        yield answer

    def _models(self, principal: Principal, headers: dict[str, str]) -> ext.ProcessingResponse:
        """`GET /v1/models[/{id}]`: the served models the caller may use, and their aliases."""
        path = headers.get(":path", "")
        if headers.get(":method") != "GET":
            raise InvalidArgument(f"{path} takes GET")
        resolver = self._routing.resolver
        ids = []
        for model in sorted(resolver.pools()):
            if principal.models and model not in principal.models:
                continue
            ids += [model, *resolver.aliases_of(model)]
        for name, models in sorted(resolver.tiers().items()):
            if not principal.models or any(m in principal.models for m in models):
                ids.append(name)
        created = int(time.time())
        if openai_request.api_of(path) == "model":
            wanted = openai_request.model_id(path)
            if wanted not in ids:
                raise NotFound(f"model {wanted!r} is unknown or not allowed for this caller")
            payload = openai_models.one(wanted, created)
        else:
            payload = openai_models.listing(((i, openai_models.OWNER) for i in ids), created)
        return openai_errors.response(200, payload, details="switchyard_router_models")

    async def Process(
        self, requests: AsyncIterator[ext.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ext.ProcessingResponse]:
        # The stream stays open until Envoy ends the turn's HTTP stream (every attempt on an
        # engine included): its end tells admission that a turn sent on is over.
        sent: list[str] = []
        try:
            async for answer in self._process(requests, context, sent):
                yield answer
        finally:
            for res_id in sent:
                self._admission.stream_closed(res_id)

    async def _process(
        self,
        requests: AsyncIterator[ext.ProcessingRequest],
        context: grpc.aio.ServicerContext,
        sent: list[str],
    ) -> AsyncIterator[ext.ProcessingResponse]:
        headers: dict[str, str] = {}
        principal: Principal | None = None
        async for msg in requests:
            kind = msg.WhichOneof("request")
            if kind == "request_headers":
                headers = header_map(msg.request_headers)
                http = _is_http(headers)
                try:  # who is calling, before anything else (and before the body is sent)
                    api = openai_request.api_of(headers.get(":path", ""))
                    check_request_headers(headers, self._routing.limits)
                    principal = await self._auth.authenticate(headers.get(h.AUTHORIZATION, ""))
                    principal, _ = self._admission.effective(principal)
                    if api in ("models", "model"):
                        yield self._models(principal, headers)
                        return
                    if api is not None and headers.get(":method") != "POST":
                        raise InvalidArgument(f"{headers.get(':path')} takes POST")
                except SwitchyardError as e:
                    yield _error(e, http)
                    return
                if msg.request_headers.end_of_stream:
                    yield _error(InvalidArgument("request has no body"), http)
                    return
                yield ext.ProcessingResponse(
                    request_headers=ext.HeadersResponse(
                        response=ext.CommonResponse(header_mutation=identify(principal, headers))
                    )
                )
            elif kind == "request_body":
                assert principal is not None  # Envoy sends the headers first
                body = msg.request_body.body
                if self._tracer is None:
                    async for answer in self._body(
                        headers, body, principal, trace.INVALID_SPAN, sent
                    ):
                        yield answer
                    continue
                parent = extract(context.invocation_metadata() or ()) if context else None
                # Not made current: the answers are yielded while it is open (nothing below
                # starts spans of its own; each is given `span`).
                span = self._tracer.start_span(PICK_SPAN, context=parent)
                try:
                    async for answer in self._body(headers, body, principal, span, sent):
                        yield answer
                finally:
                    span.end()
            elif kind == "request_trailers":
                yield ext.ProcessingResponse(request_trailers=ext.TrailersResponse())
            elif kind == "response_headers":
                yield ext.ProcessingResponse(response_headers=ext.HeadersResponse())
            elif kind == "response_body":
                yield ext.ProcessingResponse(response_body=ext.BodyResponse())
            elif kind == "response_trailers":
                yield ext.ProcessingResponse(response_trailers=ext.TrailersResponse())


def _is_http(headers: dict[str, str]) -> bool:
    """An OpenAI HTTP request (answered with OpenAI errors), not a gRPC one."""
    return headers.get(":path", "").startswith(openai_request.PREFIX)


def _error(err: SwitchyardError, http: bool) -> ext.ProcessingResponse:
    return openai_errors.immediate(err, "router") if http else immediate_error(err, "router")
