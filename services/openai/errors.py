"""gRPC statuses as OpenAI error objects: the HTTP status a client's SDK maps to its exception
class (400 BadRequestError, 401 AuthenticationError, 403 PermissionDeniedError, 404
NotFoundError, 413, 429 RateLimitError with `Retry-After`, 503…), and the body

    {"error": {"message": "…", "type": "invalid_request_error", "param": null, "code": null}}
"""

from __future__ import annotations

import json
import math

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.type.v3 import http_status_pb2

from services.common.errors import SwitchyardError

JSON = "application/json"

# gRPC status code (its number) → (HTTP status, OpenAI error type).
_BY_CODE: dict[int, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT.value[0]: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION.value[0]: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE.value[0]: (400, "invalid_request_error"),
    grpc.StatusCode.UNIMPLEMENTED.value[0]: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED.value[0]: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED.value[0]: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND.value[0]: (404, "not_found_error"),
    grpc.StatusCode.ALREADY_EXISTS.value[0]: (409, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED.value[0]: (499, "server_error"),
    grpc.StatusCode.INTERNAL.value[0]: (500, "server_error"),
    grpc.StatusCode.UNKNOWN.value[0]: (500, "server_error"),
    grpc.StatusCode.DATA_LOSS.value[0]: (500, "server_error"),
    grpc.StatusCode.ABORTED.value[0]: (503, "server_error"),
    grpc.StatusCode.UNAVAILABLE.value[0]: (503, "server_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED.value[0]: (504, "server_error"),
}
_TYPE_BY_HTTP = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def http_status(grpc_code: int) -> tuple[int, str]:
    """(HTTP status, OpenAI error type) for a gRPC status code number."""
    return _BY_CODE.get(grpc_code, (500, "server_error"))


def body(message: str, error_type: str, code: str | None = None, param: str | None = None) -> bytes:
    """An OpenAI error object, serialized."""
    error = {"message": message, "type": error_type, "param": param, "code": code}
    return json.dumps({"error": error}, separators=(",", ":")).encode()


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def of(err: SwitchyardError) -> tuple[int, list[tuple[str, str]], bytes]:
    """The HTTP status, headers and body answering `err`."""
    status, error_type = http_status(err.code.value[0])
    status = err.http_status or status
    error_type = _TYPE_BY_HTTP.get(status, error_type)
    extra = list(err.metadata())
    retry_after = getattr(err, "retry_after", None)
    if status == 429 and retry_after is not None:
        extra.append(("retry-after", str(max(1, math.ceil(retry_after)))))
    code = err.code.name.lower() if err.http_status is None else None
    return status, extra, body(err.message, error_type, code=code, param=err.param)


def immediate(err: SwitchyardError, source: str) -> ext.ProcessingResponse:
    """An ext_proc immediate response answering an HTTP turn with `err` as OpenAI does;
    `source` ("router", "safety") names who refused it in Envoy's response-code details."""
    status, extra, payload = of(err)
    return response(status, payload, extra, details=f"switchyard_{source}_{status}")


def response(
    status: int, payload: bytes, extra: list[tuple[str, str]] | None = None, *, details: str
) -> ext.ProcessingResponse:
    """An ext_proc immediate response: `status`, a JSON body and `extra` headers."""
    headers = [_header("content-type", JSON), *(_header(k, v) for k, v in extra or ())]
    return ext.ProcessingResponse(
        immediate_response=ext.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            body=payload,
            details=details,
            headers=ext.HeaderMutation(set_headers=headers),
        )
    )
