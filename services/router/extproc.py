"""Envoy's ext_proc for the router: one exchange per turn, never in the token stream.

Envoy sends the request headers, then the whole buffered gRPC request body. The router decodes
the GenerateRequest, picks the engine, and answers the body with header mutations naming the
pool (the route) and the endpoint (Envoy's override_host load balancer), clearing the route
cache so the route is chosen again with them. Anything that cannot be routed is answered with an
immediate gRPC error (INVALID_ARGUMENT, UNAVAILABLE…) and never reaches an engine; so is a turn
the router fails on unexpectedly (INTERNAL, logged), never a bare reset that a client would
retry. Nothing here blocks the event loop for long: a body over the size limit is refused before
it is decoded, and long prompts are tokenized in a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from services.common import headers as h
from services.common.errors import Internal, InvalidArgument, SwitchyardError, Unimplemented
from services.common.extproc import (
    GENERATE_PATH,
    LONG_BODY_BYTES,
    LONG_BODY_SECONDS,
    extend_timeout,
    header_map,
    immediate_error,
    replace_request_body,
    set_header,
)
from services.common.frames import encode_frame, single_message
from services.common.protoutil import decode_request
from services.common.tracing import extract
from services.router.auth.authenticator import Authenticator
from services.router.auth.principal import Principal
from services.router.routing import RoutingService, check_request_headers, check_request_size
from services.router.scheduling.interfaces import RoutingRequest
from services.router.scheduling.scheduler import Decision
from services.router.tenancy.admission import Admission, QuotaExceeded
from services.router.tenancy.policy import TenantPolicy
from switchyard.v1 import inference_pb2

log = logging.getLogger(__name__)


PICK_SPAN = "switchyard.router.pick"


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


def cache_salt(tenant: str, policy: TenantPolicy) -> str:
    """The prefix-cache salt of a tenant's turns: its cache group's, or its own."""
    return f"group:{policy.cache_group}" if policy.cache_group else f"tenant:{tenant}"


def identify(principal: Principal, headers: dict[str, str]) -> ext.HeaderMutation:
    """The headers answer once the caller is known: the mesh's own headers set from the
    principal, and every client copy of an internal header and the credential removed (Envoy
    strips the known ones at the listener already; engines never see an API key)."""
    return ext.HeaderMutation(
        set_headers=[set_header(h.TENANT, principal.tenant), set_header(h.TIER, principal.tier)],
        remove_headers=[
            k
            for k in headers
            if (k.startswith(h.INTERNAL_PREFIX) and k not in (h.TENANT, h.TIER))
            or k == h.AUTHORIZATION
        ],
    )


class ExtProcService(ext_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(
        self,
        routing: RoutingService,
        auth: Authenticator,
        admission: Admission,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._routing = routing
        self._auth = auth
        self._admission = admission
        self._tracer = tracer  # None: tracing off, nothing extracted or recorded per turn

    def add_to_server(self, server: grpc.aio.Server) -> None:
        ext_grpc.add_ExternalProcessorServicer_to_server(self, server)

    async def decide(
        self,
        headers: dict[str, str],
        body: bytes,
        principal: Principal,
        span: trace.Span | None = None,
    ) -> ext.ProcessingResponse:
        """The answer to a turn's buffered body: route headers, or an immediate error."""
        span = span or trace.INVALID_SPAN
        if span.is_recording():
            span.set_attributes(
                {
                    "switchyard.tenant": principal.tenant,
                    "switchyard.tier": principal.tier,
                    "switchyard.auth": principal.key_id.partition(":")[0] or "none",
                }
            )
        try:
            path = headers.get(":path", "")
            if path != GENERATE_PATH:
                raise Unimplemented(f"{path or 'this method'} is not served by the mesh")
            check_request_size(len(body), self._routing.limits)
            req = decode_request(inference_pb2.GenerateRequest, single_message(body))
            if span.is_recording():
                span.set_attribute("gen_ai.request.model", req.model or "auto")
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
            if span.is_recording():
                span.set_attributes(
                    {
                        "switchyard.quota.decision": ticket.decision,
                        "switchyard.quota.remaining": ticket.remaining,
                        "switchyard.quota.reserved": routed.output_bound
                        + (0 if routed.resumed else routed.prompt_tokens),
                    }
                )
            try:
                decision = await self._routing.pick(routed)
            except BaseException:
                await self._admission.release(ticket)
                raise
        except SwitchyardError as e:
            span.set_status(Status(StatusCode.ERROR, f"{e.code.name}: {e.message}"))
            if isinstance(e, QuotaExceeded) and span.is_recording():
                span.set_attribute("switchyard.quota.decision", "over_quota")
            return immediate_error(e, "router")
        except Exception as e:
            log.exception("routing a turn failed")
            span.set_status(Status(StatusCode.ERROR, f"INTERNAL: {e!r}"))
            return immediate_error(
                Internal(f"the router failed to route the turn ({type(e).__name__})"), "router"
            )
        if span.is_recording():
            _annotate(span, decision, routed)
        endpoints = [decision.engine.address, *(f.address for f in decision.fallbacks)]
        mutation = ext.HeaderMutation(
            set_headers=[
                set_header(h.POOL, decision.engine.pool),
                set_header(h.ENDPOINT, h.endpoint_list(endpoints)),
                set_header(h.ENGINE, decision.engine.engine_id),
                set_header(h.PRIORITY, str(routed.priority)),
                set_header(h.CACHE_SALT, routed.cache_salt),
                *(set_header(k, v) for k, v in ticket.headers),
            ]
        )
        body_mutation = None
        if req.model != routed.model or routed.capped:
            # An alias or "auto": the engine sees the served model name it answers to; a turn
            # without max_tokens gets its tenant's default cap (what its quota reserved).
            req.model = routed.model
            if routed.capped:
                req.sampling.max_tokens = routed.capped
            body_mutation = replace_request_body(encode_frame(req.SerializeToString()), mutation)
        return ext.ProcessingResponse(
            request_body=ext.BodyResponse(
                response=ext.CommonResponse(
                    header_mutation=mutation, body_mutation=body_mutation, clear_route_cache=True
                )
            )
        )

    async def Process(
        self, requests: AsyncIterator[ext.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ext.ProcessingResponse]:
        headers: dict[str, str] = {}
        principal: Principal | None = None
        async for msg in requests:
            kind = msg.WhichOneof("request")
            if kind == "request_headers":
                headers = header_map(msg.request_headers)
                try:  # who is calling, before anything else (and before the body is sent)
                    check_request_headers(headers, self._routing.limits)
                    principal = await self._auth.authenticate(headers.get(h.AUTHORIZATION, ""))
                    principal, _ = self._admission.effective(principal)
                except SwitchyardError as e:
                    yield immediate_error(e, "router")
                    return
                if msg.request_headers.end_of_stream:
                    yield immediate_error(InvalidArgument("request has no body"), "router")
                    return
                yield ext.ProcessingResponse(
                    request_headers=ext.HeadersResponse(
                        response=ext.CommonResponse(header_mutation=identify(principal, headers))
                    )
                )
            elif kind == "request_body":
                assert principal is not None  # Envoy sends the headers first
                if len(msg.request_body.body) >= LONG_BODY_BYTES:
                    yield extend_timeout(LONG_BODY_SECONDS)  # tokenizing it takes a while
                if self._tracer is None:
                    yield await self.decide(headers, msg.request_body.body, principal)
                    continue
                parent = extract(context.invocation_metadata() or ()) if context else None
                with self._tracer.start_as_current_span(PICK_SPAN, context=parent) as span:
                    answer = await self.decide(headers, msg.request_body.body, principal, span)
                yield answer
            elif kind == "request_trailers":
                yield ext.ProcessingResponse(request_trailers=ext.TrailersResponse())
            elif kind == "response_headers":
                yield ext.ProcessingResponse(response_headers=ext.HeadersResponse())
            elif kind == "response_body":
                yield ext.ProcessingResponse(response_body=ext.BodyResponse())
            elif kind == "response_trailers":
                yield ext.ProcessingResponse(response_trailers=ext.TrailersResponse())
