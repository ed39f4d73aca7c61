"""Envoy's ext_proc for the safety filter: the prompt policy on the buffered request body, and
the scrub of the STREAMED response body, chunk by chunk.

Envoy calls it after the router's filter, so the request body names the served model the router
resolved. Per turn: the buffered request body for the prompt policy (pass, rewrite with the
redacted prompt, or an immediate INVALID_ARGUMENT / PERMISSION_DENIED), with the request headers
it reads (the tenant the router set…) as Envoy attributes, since a gRPC turn skips the headers
message (one round trip less); then every response body chunk (rewritten by `ResponseFilter`:
text held back only while it could still begin an entity, the Final gains the SafetyReport, a
blocked entity ends the turn with a FINISH_REASON_BLOCKED Final and drops the rest). If this
service is down or fails, Envoy fails the turn (see the filter's config in the xDS builder); it
never passes text unscrubbed.

An OpenAI HTTP turn (the router marked it with `x-switchyard-openai`) is scrubbed the same way
and answered in OpenAI's format (`http_response`): its route sends the request headers first
and streams the response here full-duplex, with headers and trailers, and refusals are OpenAI
error objects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Status, StatusCode

from services.common import headers as h
from services.common.errors import Internal, InvalidArgument, PermissionDenied, SwitchyardError
from services.common.extproc import (
    LONG_BODY_BYTES,
    LONG_BODY_SECONDS,
    attribute_headers,
    extend_timeout,
    header_map,
    immediate_error,
    replace_request_body,
    tenant_of,
)
from services.common.frames import encode_frame, single_message
from services.common.protoutil import decode_request
from services.common.tracing import extract, trace_id_hex
from services.openai import errors as openai_errors
from services.openai.request import Wire
from services.openai.stream import Encoder
from services.safety import metrics as m
from services.safety.cache_feed import CacheFeed
from services.safety.config import SafetyConfig
from services.safety.http_response import HttpResponse
from services.safety.prompt import check_prompt
from services.safety.response import ResponseFilter
from services.safety.scrubber import Policy
from switchyard.v1 import inference_pb2

log = logging.getLogger(__name__)

SCAN_SPAN = "switchyard.safety.scan"
_T = TypeVar("_T")
# Request bodies at least this large are scanned off the event loop.
OFFLOAD_BYTES = 64 * 1024


def _body(data: bytes | None, *, request: bool, held: bool = True) -> ext.ProcessingResponse:
    """Continue with the body, replaced by `data` when it is not None. A request body whose
    headers Envoy `held` for this filter also loses its content-length; one whose headers went
    on already (the filter skips them) has none: Envoy dropped it."""
    if request:
        headers = ext.HeaderMutation()
        mutation = replace_request_body(data, headers) if data is not None else None
        return ext.ProcessingResponse(
            request_body=ext.BodyResponse(
                response=ext.CommonResponse(
                    header_mutation=headers if data is not None and held else None,
                    body_mutation=mutation,
                )
            )
        )
    body = ext.BodyMutation(body=data) if data is not None else None
    return ext.ProcessingResponse(
        response_body=ext.BodyResponse(response=ext.CommonResponse(body_mutation=body))
    )


class _Turn:
    """What the filter knows about one turn."""

    def __init__(self) -> None:
        self.tenant = "anonymous"
        self.model = ""
        self.policy: Policy | None = None
        self.filter: ResponseFilter | None = None
        self.outcome = "passed"
        self.parent: Context | None = None  # the trace context Envoy sent
        self.response_span: trace.Span | None = None  # from the first response chunk to the end
        self.response_chunks = 0
        self.response_scan_s = 0.0  # time spent scanning the response
        self.max_held_back = 0
        self.prompt_findings: dict[str, int] = {}
        # Envoy sent this turn's request: a response without it is a local reply an earlier
        # filter (the router) wrote, which never reached an engine, and passes as it is.
        self.seen_request = False
        self.wire: Wire | None = None  # an OpenAI HTTP turn: how it is answered
        self.http: HttpResponse | None = None
        # A cacheable turn the router marked for storing: its entry, until it is offered.
        self.cache_store = ""
        # Envoy held the request headers for this filter (it asked for them): an OpenAI turn.
        self.headers_held = False

    def begin(self, headers: dict[str, str]) -> None:
        """The request's headers this filter reads, all set by the router (from Envoy's headers
        message, or the attributes sent with the body when the filter skips it)."""
        self.seen_request = True
        self.tenant = tenant_of(headers)
        if h.OPENAI in headers:
            self.wire = Wire.decode(headers[h.OPENAI])
        self.cache_store = headers.get(h.CACHE_STORE, "")

    def error(self, err: SwitchyardError) -> ext.ProcessingResponse:
        """The turn refused by the safety filter, in the client's protocol."""
        if self.wire is not None:
            return openai_errors.immediate(err, "safety")
        return immediate_error(err, "safety")


def _finding_attributes(findings: dict[str, int], policy: Policy) -> dict[str, str | int]:
    out: dict[str, str | int] = {}
    for entity_type, n in sorted(findings.items()):
        out[f"switchyard.safety.findings.{entity_type}"] = n
        out[f"switchyard.safety.action.{entity_type}"] = policy.action(entity_type)
    return out


class SafetyExtProc(ext_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(
        self,
        config: SafetyConfig,
        tracer: trace.Tracer | None = None,
        cache_feed: CacheFeed | None = None,
    ) -> None:
        self._config = config
        self._cache_feed = cache_feed  # where completed cacheable turns go; None: nowhere
        # None: tracing off, nothing extracted per turn (spans then go to a no-op tracer).
        self._tracing = tracer is not None
        self._tracer = tracer or trace.NoOpTracer()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        ext_grpc.add_ExternalProcessorServicer_to_server(self, server)

    def _policy(self, turn: _Turn) -> Policy:
        if turn.policy is None:
            turn.policy = self._config.policy(turn.tenant, turn.model)
        return turn.policy

    async def request_body(self, turn: _Turn, body: bytes) -> ext.ProcessingResponse:
        """The prompt policy on the whole request body, in its own span; a long prompt is
        scanned in a worker thread so that every other turn's response keeps streaming."""
        with self._tracer.start_as_current_span(SCAN_SPAN, context=turn.parent) as span:
            if len(body) < OFFLOAD_BYTES:
                answer = self._request_body(turn, body)
            else:
                answer = await asyncio.to_thread(self._request_body, turn, body)
            if span.is_recording():
                span.set_attributes(
                    {
                        "switchyard.safety.path": "prompt",
                        "switchyard.tenant": turn.tenant,
                        "gen_ai.request.model": turn.model,
                        "switchyard.safety.outcome": turn.outcome,
                        **_finding_attributes(turn.prompt_findings, self._policy(turn)),
                    }
                )
                if answer.HasField("immediate_response"):
                    span.set_status(Status(StatusCode.ERROR, turn.outcome))
        return answer

    def _request_body(self, turn: _Turn, body: bytes) -> ext.ProcessingResponse:
        started = time.perf_counter()
        try:
            req = decode_request(inference_pb2.GenerateRequest, single_message(body))
            turn.model = req.model
            policy = self._policy(turn)
            mode = self._config.prompt_mode(turn.tenant, turn.model)
            result = check_prompt(req, policy, mode, self._config.recognizers)
        except SwitchyardError as e:
            turn.outcome = {
                InvalidArgument: "prompt_rejected",
                PermissionDenied: "prompt_denied",
            }.get(type(e), "error")
            return turn.error(e)
        except Exception as e:
            log.exception("the prompt policy failed")
            turn.outcome = "error"
            return turn.error(
                Internal(f"the safety filter failed on the prompt ({type(e).__name__})")
            )
        finally:
            m.PROMPT_CHUNKS.inc()
            m.PROMPT_SCAN_SECONDS.observe(time.perf_counter() - started)
        turn.prompt_findings = dict(result.findings)
        for entity_type, n in result.findings.items():
            m.FINDINGS.labels("prompt", entity_type, policy.action(entity_type)).inc(n)
        if not result.changed:
            return _body(None, request=True)
        turn.outcome = "prompt_redacted"
        return _body(encode_frame(req.SerializeToString()), request=True, held=turn.headers_held)

    def _filter(self, turn: _Turn) -> ResponseFilter:
        if turn.filter is None:
            encoder = Encoder(turn.wire) if turn.wire is not None else None
            record = bool(turn.cache_store) and self._cache_feed is not None
            turn.filter = ResponseFilter(
                self._policy(turn), self._config.recognizers, encoder, record=record
            )
            turn.response_span = self._tracer.start_span(SCAN_SPAN, context=turn.parent)
            if encoder is not None:
                trace_id = trace_id_hex(trace.get_current_span(turn.parent))
                turn.http = HttpResponse(encoder, turn.filter, trace_id)
        return turn.filter

    def response_body(self, turn: _Turn, body: ext.HttpBody) -> ext.ProcessingResponse:
        """One streamed response chunk, rewritten."""
        out = self._scrub(turn, lambda f: f.feed(body.body, body.end_of_stream))
        if isinstance(out, ext.ProcessingResponse):
            return out
        return _body(out, request=False)

    def http_response(
        self, turn: _Turn, msg: ext.ProcessingRequest, kind: str
    ) -> list[ext.ProcessingResponse]:
        """The answers to one response message of an OpenAI HTTP turn."""
        self._filter(turn)
        http = turn.http
        assert http is not None
        if kind == "response_headers":
            return list(http.on_headers(msg.response_headers))
        if kind == "response_trailers":
            return list(http.on_trailers(msg.response_trailers))
        out = self._scrub(turn, lambda _: list(http.on_body(msg.response_body)))
        return [out] if isinstance(out, ext.ProcessingResponse) else out

    def _scrub(
        self, turn: _Turn, step: Callable[[ResponseFilter], _T]
    ) -> _T | ext.ProcessingResponse:
        """Run one scrub step of the response, timed and counted; a failure fails the turn."""
        started = time.perf_counter()
        f = self._filter(turn)
        try:
            out = step(f)
        except SwitchyardError as e:
            # The stream cannot be scrubbed: fail it rather than pass anything on unread.
            log.error("response of a %s turn cannot be filtered: %s", turn.model, e.message)
            turn.outcome = "error"
            return turn.error(Internal(f"safety filter: {e.message}"))
        except Exception as e:
            log.exception("scrubbing a %s turn failed", turn.model)
            turn.outcome = "error"
            return turn.error(
                Internal(f"the safety filter failed on the reply ({type(e).__name__})")
            )
        finally:
            elapsed = time.perf_counter() - started
            m.RESPONSE_CHUNKS.inc()
            m.RESPONSE_SCAN_SECONDS.observe(elapsed)
            turn.response_chunks += 1
            turn.response_scan_s += elapsed
        m.HELD_BACK_BYTES.observe(f.held_back)
        turn.max_held_back = max(turn.max_held_back, f.held_back)
        if f.blocked:
            turn.outcome = "blocked"
        elif turn.cache_store and f.recorded_final is not None and self._cache_feed is not None:
            assert f.recorded is not None
            self._cache_feed.offer(turn.cache_store, f.recorded, f.recorded_final)
            turn.cache_store = ""
        return out

    def _record(self, turn: _Turn) -> None:
        m.TURNS.labels(turn.outcome).inc()
        f = turn.filter
        if f is not None and turn.policy is not None:
            for entity_type, n in f.findings.items():
                m.FINDINGS.labels("response", entity_type, turn.policy.action(entity_type)).inc(n)
        span = turn.response_span
        if span is not None:
            if span.is_recording() and f is not None and turn.policy is not None:
                span.set_attributes(
                    {
                        "switchyard.safety.path": "response",
                        "switchyard.tenant": turn.tenant,
                        "gen_ai.response.model": turn.model,
                        "switchyard.safety.outcome": turn.outcome,
                        "switchyard.safety.chunks": turn.response_chunks,
                        "switchyard.safety.scan_ms": round(turn.response_scan_s * 1e3, 3),
                        "switchyard.safety.max_held_back": turn.max_held_back,
                        "switchyard.safety.blocked": f.blocked,
                        **_finding_attributes(dict(f.findings), turn.policy),
                    }
                )
            span.end()

    async def Process(
        self, requests: AsyncIterator[ext.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ext.ProcessingResponse]:
        turn = _Turn()
        if self._tracing and context is not None:
            turn.parent = extract(context.invocation_metadata() or ())
        m.ACTIVE_STREAMS.inc()
        try:
            async for msg in requests:
                kind = msg.WhichOneof("request")
                if kind == "request_headers":  # an OpenAI turn's (a gRPC turn's are skipped)
                    turn.begin(header_map(msg.request_headers))
                    turn.headers_held = True
                    yield ext.ProcessingResponse(request_headers=ext.HeadersResponse())
                elif kind == "request_body":
                    if not turn.seen_request:  # what it reads of the headers came with it
                        turn.begin(attribute_headers(msg))
                    if len(msg.request_body.body) >= LONG_BODY_BYTES:
                        yield extend_timeout(LONG_BODY_SECONDS)  # scanning it takes a while
                    yield await self.request_body(turn, msg.request_body.body)
                elif not turn.seen_request and kind == "response_body":
                    yield ext.ProcessingResponse(response_body=ext.BodyResponse())
                elif turn.wire is not None and kind.startswith("response_"):
                    for answer in self.http_response(turn, msg, kind):
                        yield answer
                elif kind == "response_body":
                    yield self.response_body(turn, msg.response_body)
                elif kind == "request_trailers":
                    yield ext.ProcessingResponse(request_trailers=ext.TrailersResponse())
                elif kind == "response_headers":
                    yield ext.ProcessingResponse(response_headers=ext.HeadersResponse())
                elif kind == "response_trailers":
                    yield ext.ProcessingResponse(response_trailers=ext.TrailersResponse())
        finally:
            m.ACTIVE_STREAMS.dec()
            self._record(turn)
