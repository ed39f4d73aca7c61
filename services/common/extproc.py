"""Pieces every Envoy ext_proc server of the mesh shares (the router's and the safety filter's):
reading Envoy's header message, setting headers, and answering a turn with a gRPC error that
Envoy sends to the client itself, without reaching an engine."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2
from google.rpc import status_pb2

from services.common import headers as h
from services.common.errors import SwitchyardError

# The one method the mesh serves.
GENERATE_PATH = "/switchyard.v1.Inference/Generate"
CONTENT_LENGTH = "content-length"
# A request body this large may take longer than Envoy's per-message timeout to examine
# (tokenize, scan): the service first asks Envoy to wait up to LONG_BODY_SECONDS for its answer
# (within the filter's max_message_timeout, see the xDS builder).
LONG_BODY_BYTES = 256 * 1024
LONG_BODY_SECONDS = 20.0
# gRPC's rich error status (google.rpc.Status with details), as binary metadata.
STATUS_DETAILS = "grpc-status-details-bin"


GRPC_TIMEOUT = "grpc-timeout"
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def grpc_timeout(headers: dict[str, str]) -> float | None:
    """The client's deadline as seconds from now (its `grpc-timeout` header); None: none."""
    raw = headers.get(GRPC_TIMEOUT, "")
    if len(raw) < 2 or raw[-1] not in _TIMEOUT_UNITS or not raw[:-1].isdigit():
        return None
    return int(raw[:-1]) * _TIMEOUT_UNITS[raw[-1]]


def header_map(msg: ext.HttpHeaders) -> dict[str, str]:
    """Envoy's header message as a dict (Envoy sends raw_value; older versions value)."""
    return {x.key: (x.raw_value.decode(errors="replace") or x.value) for x in msg.headers.headers}


def header_attributes(names: tuple[str, ...]) -> list[str]:
    """Envoy `request_attributes` (or `response_attributes`) that send these request headers'
    values with an ext_proc server's first message (in that direction)."""
    return [f"request.headers['{name}']" for name in names]


_HEADER_ATTRIBUTE = re.compile(r"^request\.headers\['(.+)'\]$")


def attribute_headers(msg: ext.ProcessingRequest) -> dict[str, str]:
    """The headers `header_attributes` asked for, as Envoy sent them (a header the request
    does not have is absent)."""
    out: dict[str, str] = {}
    for struct in msg.attributes.values():
        for key, value in struct.fields.items():
            m = _HEADER_ATTRIBUTE.match(key)
            if m and value.WhichOneof("kind") == "string_value":
                out[m.group(1)] = value.string_value
    return out


def tenant_of(headers: dict[str, str]) -> str:
    """The tenant a turn belongs to, as the router set it once it authenticated the caller
    (Envoy strips every client copy of the header at its listener)."""
    return headers.get(h.TENANT, "") or "anonymous"


_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def set_header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()), append_action=_OVERWRITE
    )


def set_headers(mutation: ext.HeaderMutation, pairs: Iterable[tuple[str, str]]) -> None:
    """Add to `mutation` the setting of each (header, value), in place: the same messages as
    `set_header`, without building each apart and copying it in (the router's path sets a
    dozen headers a turn)."""
    add = mutation.set_headers.add
    for key, value in pairs:
        option = add(append_action=_OVERWRITE)
        option.header.key = key
        option.header.raw_value = value.encode()


def replace_request_body(body: bytes, mutation: ext.HeaderMutation) -> ext.BodyMutation:
    """The body mutation that replaces a buffered request body with `body`, adding to
    `mutation` the removal of `content-length`: a client may send one (gRPC allows it), and
    Envoy fails the turn when it disagrees with the new body's length."""
    if CONTENT_LENGTH not in mutation.remove_headers:
        mutation.remove_headers.append(CONTENT_LENGTH)
    return ext.BodyMutation(body=body)


def extend_timeout(seconds: float) -> ext.ProcessingResponse:
    """Asks Envoy to wait up to `seconds` for the answer to the message being processed."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return ext.ProcessingResponse(override_message_timeout=d)


def immediate_error(err: SwitchyardError, source: str) -> ext.ProcessingResponse:
    """A gRPC error for the client; `source` ("router", "safety") names who refused the turn in
    Envoy's response-code details (access logs, stats)."""
    extra = [set_header(k, v) for k, v in err.metadata()]
    details = err.details()
    if details:
        status = status_pb2.Status(code=err.code.value[0], message=err.message)
        for d in details:
            status.details.add().Pack(d)
        # Binary metadata is sent base64-encoded; gRPC clients decode it (rpc_status.from_call).
        encoded = base64.b64encode(status.SerializeToString()).decode()
        extra.append(set_header(STATUS_DETAILS, encoded))
    return ext.ProcessingResponse(
        immediate_response=ext.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.OK),
            grpc_status=ext.GrpcStatus(status=err.code.value[0]),
            body=err.message.encode(),
            details=f"switchyard_{source}_{err.code.name.lower()}",
            headers=ext.HeaderMutation(set_headers=extra) if extra else None,
        )
    )
