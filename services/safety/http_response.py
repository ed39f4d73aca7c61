"""The response of an OpenAI HTTP turn, as the safety filter's ext_proc answers it.

The pool's HTTP route streams the response to this filter FULL_DUPLEX_STREAMED, with headers
and trailers (see the xDS builder): answers are not tied one-to-one to Envoy's messages, so
the filter can hold text back, hold the headers until it knows the status, and write at the
trailers. Per message from Envoy, `HttpResponse` gives the answers to send:

- response headers: an engine's gRPC answer becomes `200` with `text/event-stream` (streamed)
  at once; a non-streamed turn's headers are held until its Final or its error, so that a
  failure gets its own HTTP status. A trailers-only gRPC error (the engine refused the turn,
  or Envoy found none to take it) becomes an OpenAI error object with its HTTP status. A
  response that is not gRPC (a local reply Envoy already wrote as JSON) passes untouched.
- body chunks: scrubbed by the turn's `ResponseFilter` and encoded by `services/openai/stream`.
- trailers: a gRPC error after the stream started is written as an error event (or, not
  streamed, the error object with its status); the gRPC trailers are dropped (HTTP/1.1 has
  none, and an HTTP/2 client has no use for them).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from urllib.parse import unquote

from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from google.protobuf.message import DecodeError

from services.common import headers as h
from services.common.extproc import STATUS_DETAILS, header_map, set_header
from services.openai import errors as openai_errors
from services.openai.stream import Encoder
from services.safety.response import ResponseFilter
from switchyard.v1 import inference_pb2

GRPC_STATUS = "grpc-status"
GRPC_MESSAGE = "grpc-message"
GRPC_CONTENT_TYPE = "application/grpc"
INTERNAL = 13
# Response headers an HTTP client has no use for (the engine's binary ServedBy, gRPC's own).
_DROPPED = (h.SERVED_BY, "grpc-accept-encoding", "grpc-encoding")
# What an HTTP client gets instead: "<pool>/<engine>" of the engine that took the turn.
SERVED_BY = "x-switchyard-served-by"


def _served_by(value: str) -> str:
    """The "pool/engine" of the engine's binary ServedBy header (base64, as on the wire)."""
    try:
        served = inference_pb2.ServedBy.FromString(base64.b64decode(value + "=="))
    except (ValueError, DecodeError):
        return ""
    return f"{served.pool}/{served.engine}" if served.engine else ""


def _streamed(data: bytes, end: bool = False) -> ext.ProcessingResponse:
    return ext.ProcessingResponse(
        response_body=ext.BodyResponse(
            response=ext.CommonResponse(
                body_mutation=ext.BodyMutation(
                    streamed_response=ext.StreamedBodyResponse(body=data, end_of_stream=end)
                )
            )
        )
    )


def _grpc_error(fields: dict[str, str]) -> tuple[int, str]:
    """(gRPC status code, message) from headers or trailers; code 0 when OK."""
    raw = fields.get(GRPC_STATUS, "0")
    code = int(raw) if raw.isdigit() else INTERNAL
    return code, unquote(fields.get(GRPC_MESSAGE, ""))


class HttpResponse:
    def __init__(self, encoder: Encoder, scrub: ResponseFilter, trace_id: str = "") -> None:
        self.encoder = encoder
        self.scrub = scrub
        self._trace_id = trace_id
        self._passthrough = False  # not an engine's gRPC answer: forwarded as it is
        self._held = False  # a non-streamed turn's headers, not answered yet
        self._served_by = ""

    def _headers(self, status: int | None = None) -> ext.ProcessingResponse:
        mutation = ext.HeaderMutation(
            set_headers=[set_header("content-type", self.encoder.content_type)],
            remove_headers=list(_DROPPED),
        )
        if self.encoder.wire.stream:
            mutation.set_headers.append(set_header("cache-control", "no-cache"))
        if status is not None:
            mutation.set_headers.append(set_header(":status", str(status)))
        if self._trace_id:
            mutation.set_headers.append(set_header(h.TRACE_ID, self._trace_id))
        if self._served_by:
            mutation.set_headers.append(set_header(SERVED_BY, self._served_by))
        return ext.ProcessingResponse(
            response_headers=ext.HeadersResponse(
                response=ext.CommonResponse(header_mutation=mutation)
            )
        )

    def on_headers(self, msg: ext.HttpHeaders) -> Iterator[ext.ProcessingResponse]:
        fields = header_map(msg)
        if not fields.get("content-type", "").startswith(GRPC_CONTENT_TYPE):
            self._passthrough = True
            yield ext.ProcessingResponse(response_headers=ext.HeadersResponse())
            return
        if msg.end_of_stream:  # trailers-only: refused before any reply
            code, message = _grpc_error(fields)
            if code == 0:
                code, message = INTERNAL, "the engine ended the turn without a reply"
            status, error_type = openai_errors.http_status(code)
            payload = openai_errors.body(message, error_type, code=None)
            yield openai_errors.response(status, payload, details=f"switchyard_engine_{status}")
            return
        self._served_by = _served_by(fields.get(h.SERVED_BY, ""))
        if self.encoder.wire.stream:
            yield self._headers()
        else:
            self._held = True

    def on_body(self, body: ext.HttpBody) -> Iterator[ext.ProcessingResponse]:
        if self._passthrough:
            yield _streamed(body.body, body.end_of_stream)
            return
        out = self.scrub.feed(body.body, body.end_of_stream)
        if self._held and self.encoder.finished:
            self._held = False
            yield self._headers()
        if out:
            yield _streamed(out)
        if body.end_of_stream:  # no trailers will follow
            yield from self._end(INTERNAL, "the engine's stream ended without trailers")
            yield _streamed(b"", end=True)

    def on_trailers(self, msg: ext.HttpTrailers) -> Iterator[ext.ProcessingResponse]:
        if self._passthrough:
            yield ext.ProcessingResponse(response_trailers=ext.TrailersResponse())
            return
        code, message = _grpc_error(
            {x.key: (x.raw_value.decode(errors="replace") or x.value) for x in msg.trailers.headers}
        )
        if code == 0:
            code, message = INTERNAL, "the engine ended the turn without a Final"
        yield from self._end(code, message)
        yield ext.ProcessingResponse(
            response_trailers=ext.TrailersResponse(
                header_mutation=ext.HeaderMutation(
                    remove_headers=[GRPC_STATUS, GRPC_MESSAGE, STATUS_DETAILS, h.TRACE_ID]
                )
            )
        )

    def _end(self, code: int, message: str) -> Iterator[ext.ProcessingResponse]:
        """An error for a turn that ended without its Final (nothing when it had one)."""
        if self.encoder.finished:
            return
        payload = self.encoder.error(code, message)
        if self._held:
            self._held = False
            yield self._headers(status=openai_errors.http_status(code)[0])
        yield _streamed(payload)
