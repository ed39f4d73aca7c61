"""A small OTLP/gRPC trace collector that writes what it receives as local trace files, so that
`switchyard up` keeps every turn's spans — Envoy's included — for `switchyard trace`, without a
Jaeger. It speaks the real `TraceService/Export` protocol; services and Envoy export to it exactly
as they would to Jaeger or an OpenTelemetry Collector.

    sink = OtlpFileSink(Path("~/.cache/switchyard/traces")).start()   # 127.0.0.1:<free port>
    ... export to sink.endpoint ...
    sink.stop()

Lines have the schema of `services.common.tracing.span_to_json`, one file per sink process
(`otlp-<pid>.jsonl`); `services.mesh.trace` reads them.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass(frozen=True)
class SpanRecord:
    """One received span, decoded. Keys match a line of a local trace file (`to_json`)."""

    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # 16 hex digits, "" for a root span
    name: str
    service: str  # the resource's service.name
    kind: str  # "SERVER", "CLIENT", "INTERNAL", ...
    start_ns: int
    end_ns: int
    status: str  # "UNSET", "OK", "ERROR"
    status_message: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""  # instrumentation scope (the tracer's name)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    def to_json(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "name": self.name,
            "service": self.service,
            "instance": str(self.resource.get("service.instance.id", "")),
            "kind": self.kind,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "status": self.status,
            "status_message": self.status_message,
            "attributes": self.attributes,
            "events": [],
        }


def any_value(v: common_pb2.AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return key_values(v.kvlist_value.values)
    return getattr(v, which)


def key_values(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def decode(request: trace_service_pb2.ExportTraceServiceRequest) -> list[SpanRecord]:
    out = []
    for rs in request.resource_spans:
        resource = key_values(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    SpanRecord(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        service=str(resource.get("service.name", "")),
                        kind=trace_pb2.Span.SpanKind.Name(s.kind).removeprefix("SPAN_KIND_"),
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        status=trace_pb2.Status.StatusCode.Name(s.status.code).removeprefix(
                            "STATUS_CODE_"
                        ),
                        status_message=s.status.message,
                        attributes=key_values(s.attributes),
                        resource=resource,
                        scope=ss.scope.name,
                    )
                )
    return out


class OtlpFileSink(trace_service_pb2_grpc.TraceServiceServicer):
    """Appends every exported span to `<directory>/otlp-<pid>.jsonl`."""

    def __init__(self, directory: Path, address: str = "127.0.0.1:0") -> None:
        self.directory = directory.expanduser()
        self.path = self.directory / f"otlp-{os.getpid()}.jsonl"
        self._address = address
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._server: grpc.Server | None = None
        self.port = 0

    def start(self) -> OtlpFileSink:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="otlp"))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        self.port = server.add_insecure_port(self._address)
        if self.port == 0:
            raise OSError(f"cannot bind the OTLP sink to {self._address}")
        server.start()
        self._server = server
        return self

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=1).wait(5)
            self._server = None
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        text = "".join(json.dumps(s.to_json(), default=str) + "\n" for s in decode(request))
        with self._lock:
            if self._file is not None:
                self._file.write(text)
                self._file.flush()
        return trace_service_pb2.ExportTraceServiceResponse()
