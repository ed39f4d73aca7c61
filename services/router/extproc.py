"""Envoy's ext_proc for the router: one exchange per turn, never in the token stream.

Envoy sends the request headers, then the whole buffered gRPC request body. The router decodes
the GenerateRequest, picks the engine, and answers the body with header mutations naming the
pool (the route) and the endpoint (Envoy's override_host load balancer), clearing the route
cache so the route is chosen again with them. Anything that cannot be routed is answered with an
immediate gRPC error (INVALID_ARGUMENT, UNAVAILABLE…) and never reaches an engine.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from envoy.type.v3 import http_status_pb2

from services.common.errors import InvalidArgument, SwitchyardError, Unimplemented
from services.common.protoutil import decode_request
from services.router import headers as h
from services.router.routing import RoutingService
from switchyard.v1 import inference_pb2

log = logging.getLogger(__name__)

GENERATE_PATH = "/switchyard.v1.Inference/Generate"
_FRAME = struct.Struct(">BI")  # gRPC message prefix: compressed flag, length


def grpc_message(body: bytes) -> bytes:
    """The one message of a unary gRPC request body (length-prefixed frame)."""
    if len(body) < _FRAME.size:
        raise InvalidArgument("request body is not a gRPC message")
    compressed, length = _FRAME.unpack_from(body)
    if compressed:
        raise Unimplemented("compressed requests are not supported; send uncompressed")
    if len(body) != _FRAME.size + length:
        raise InvalidArgument("request body must hold exactly one GenerateRequest")
    return body[_FRAME.size :]


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed frame (uncompressed) around one serialized message."""
    return _FRAME.pack(0, len(message)) + message


def immediate_error(err: SwitchyardError) -> ext.ProcessingResponse:
    """A gRPC error for the client, answered by Envoy without reaching an engine."""
    return ext.ProcessingResponse(
        immediate_response=ext.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.OK),
            grpc_status=ext.GrpcStatus(status=err.code.value[0]),
            body=err.message.encode(),
            details=f"switchyard_router_{err.code.name.lower()}",
        )
    )


def _set(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _header_map(msg: ext.HttpHeaders) -> dict[str, str]:
    return {x.key: (x.raw_value.decode(errors="replace") or x.value) for x in msg.headers.headers}


def tenant_of(headers: dict[str, str]) -> str:
    """The tenant a turn belongs to (auth and quotas come with the tenant work)."""
    return headers.get(h.TENANT, "") or "anonymous"


class ExtProcService(ext_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, routing: RoutingService) -> None:
        self._routing = routing

    def add_to_server(self, server: grpc.aio.Server) -> None:
        ext_grpc.add_ExternalProcessorServicer_to_server(self, server)

    def decide(self, headers: dict[str, str], body: bytes) -> ext.ProcessingResponse:
        """The answer to a turn's buffered body: route headers, or an immediate error."""
        try:
            path = headers.get(":path", "")
            if path != GENERATE_PATH:
                raise Unimplemented(f"{path or 'this method'} is not served by the mesh")
            req = decode_request(inference_pb2.GenerateRequest, grpc_message(body))
            decision, routed = self._routing.route(
                req, tenant=tenant_of(headers), session_id=headers.get(h.SESSION_ID, "")
            )
        except SwitchyardError as e:
            return immediate_error(e)
        body_mutation = None
        if req.model != routed.model:
            # An alias or "auto": the engine sees the served model name it answers to.
            req.model = routed.model
            body_mutation = ext.BodyMutation(body=grpc_frame(req.SerializeToString()))
        endpoints = [decision.engine.address, *(f.address for f in decision.fallbacks)]
        mutation = ext.HeaderMutation(
            set_headers=[
                _set(h.POOL, decision.engine.pool),
                _set(h.ENDPOINT, h.endpoint_list(endpoints)),
                _set(h.ENGINE, decision.engine.engine_id),
            ]
        )
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
        async for msg in requests:
            kind = msg.WhichOneof("request")
            if kind == "request_headers":
                headers = _header_map(msg.request_headers)
                if msg.request_headers.end_of_stream:
                    yield immediate_error(InvalidArgument("request has no body"))
                    return
                yield ext.ProcessingResponse(request_headers=ext.HeadersResponse())
            elif kind == "request_body":
                yield self.decide(headers, msg.request_body.body)
            elif kind == "request_trailers":
                yield ext.ProcessingResponse(request_trailers=ext.TrailersResponse())
            elif kind == "response_headers":
                yield ext.ProcessingResponse(response_headers=ext.HeadersResponse())
            elif kind == "response_body":
                yield ext.ProcessingResponse(response_body=ext.BodyResponse())
            elif kind == "response_trailers":
                yield ext.ProcessingResponse(response_trailers=ext.TrailersResponse())
