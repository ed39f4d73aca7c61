"""Envoy's ext_proc for the safety filter: the scrub of the STREAMED response body, chunk by
chunk. (The prompt policy is applied by the router, before it routes: services/safety/prompt.py.)

The filter sees nothing of the request: its stream opens at the response headers (while the
engine prefills), which bring, as Envoy attributes, the request headers it reads (all set by the
router: the tenant, the served model, the OpenAI wire, the cache mark). Then every response
body chunk is rewritten by `ResponseFilter`: text held back only while it could still begin an
entity, the Final gains the SafetyReport, a blocked entity ends the turn with a
FINISH_REASON_BLOCKED Final and drops the rest. If this service is down or fails, Envoy fails
the turn (see the filter's config in the xDS builder); it never passes text unscrubbed.

An OpenAI HTTP turn (the router marked it with `x-switchyard-openai`) is scrubbed the same way
and answered in OpenAI's format (`http_response`): its route streams the response here
full-duplex, with headers and trailers, and refusals are OpenAI error objects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from opentelemetry import trace
from opentelemetry.context import Context

from services.common import headers as h
from services.common.errors import Internal, SwitchyardError
from services.common.extproc import attribute_headers, immediate_error, tenant_of
from services.common.tracing import extract, trace_id_hex
from services.openai import errors as openai_errors
from services.openai.request import Wire
from services.openai.stream import Encoder
from services.safety import metrics as m
from services.safety.cache_feed import CacheFeed
from services.safety.config import SafetyConfig
from services.safety.http_response import HttpResponse
from services.safety.response import ResponseFilter
from services.safety.scrubber import Policy

log = logging.getLogger(__name__)

SCAN_SPAN = "switchyard.safety.scan"
_T = TypeVar("_T")


def _body(data: bytes | None) -> ext.ProcessingResponse:
    """Continue with the response body, replaced by `data` when it is not None."""
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
        self.begun = False  # the request headers it reads came (with the first message)
        # The router sent the turn on (to an engine or the cache replay): a response without it
        # is a local reply the router wrote, which never reached an engine, and passes as it is.
        self.routed = False
        self.wire: Wire | None = None  # an OpenAI HTTP turn: how it is answered
        self.http: HttpResponse | None = None
        # A cacheable turn the router marked for storing: its entry, until it is offered.
        self.cache_store = ""

    def begin(self, headers: dict[str, str]) -> None:
        """The request's headers this filter reads, all set by the router (Envoy sends them as
        attributes with the filter's first message)."""
        self.begun = True
        self.tenant = tenant_of(headers)
        self.model = headers.get(h.MODEL, "")
        self.routed = bool(self.model)
        if h.OPENAI in headers:
            self.wire = Wire.decode(headers[h.OPENAI])
        self.cache_store = headers.get(h.CACHE_STORE, "")

    def error(self, err: SwitchyardError) -> ext.ProcessingResponse:
        """The turn refused by the safety filter, in the client's protocol."""
        if self.wire is not None:
            return openai_errors.immediate(err, "safety")
        return immediate_error(err, "safety")


def _pass(kind: str) -> ext.ProcessingResponse:
    """Continue with this message unchanged."""
    if kind.endswith("_headers"):
        return ext.ProcessingResponse(**{kind: ext.HeadersResponse()})
    if kind.endswith("_body"):
        return ext.ProcessingResponse(**{kind: ext.BodyResponse()})
    return ext.ProcessingResponse(**{kind: ext.TrailersResponse()})


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
        return _body(out)

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
                if not turn.begun:  # what it reads of the request came with the first message
                    turn.begin(attribute_headers(msg))
                if turn.routed and turn.wire is not None and kind.startswith("response_"):
                    for answer in self.http_response(turn, msg, kind):
                        yield answer
                elif turn.routed and kind == "response_body":
                    yield self.response_body(turn, msg.response_body)
                else:  # the response headers and trailers of a gRPC turn; a local reply
                    yield _pass(kind)
        finally:
            m.ACTIVE_STREAMS.dec()
            self._record(turn)
