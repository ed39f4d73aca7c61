"""An in-process OTLP/gRPC trace collector for tests: the real `TraceService/Export` protocol.

    with OtlpCollector() as collector:               # listens on 127.0.0.1:<free port>
        cfg = TracingConfig(otlp_endpoint=collector.endpoint)
        ...
        [pick] = collector.wait_for(lambda s: s.name == "switchyard.router.pick")
        spans = collector.by_trace(pick.trace_id)

It serves from its own threads (a sync grpc server), so it works the same under sync and async
tests; from a coroutine use `await collector.wait_for_async(...)`, which does not block the loop.
`collector.delay_seconds = 2` makes every Export that slow; `stop()` (or `unused_endpoint()`)
gives a collector that is down. An Export whose caller gave up (deadline) while it was delayed is
not recorded, as the exporter counts it failed.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

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


class OtlpCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """Collects exported spans in memory; see the module docstring."""

    def __init__(self, *, delay_seconds: float = 0.0, address: str = "127.0.0.1:0") -> None:
        self.delay_seconds = delay_seconds  # every Export waits this long first
        self.export_calls = 0  # Export RPCs received (recorded or not)
        self._address = address
        self._spans: list[SpanRecord] = []
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._server: grpc.Server | None = None
        self.port = 0

    # --- lifecycle ---

    def start(self) -> OtlpCollector:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp"))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, server)
        self.port = server.add_insecure_port(self._address)
        if self.port == 0:
            raise OSError(f"cannot bind the OTLP collector to {self._address}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        """Stop listening (the collector is now down); delayed Exports are cut short."""
        self._stopping.set()
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None

    def __enter__(self) -> OtlpCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """HOST:PORT, as `TracingConfig.otlp_endpoint` and Envoy's OTLP cluster take it."""
        return f"127.0.0.1:{self.port}"

    # --- the protocol ---

    def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._cond:
            self.export_calls += 1
        if self.delay_seconds > 0:
            self._stopping.wait(self.delay_seconds)
        if context.is_active():
            records = decode(request)
            with self._cond:
                self._spans.extend(records)
                self._cond.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    # --- what tests read ---

    def spans(self) -> list[SpanRecord]:
        with self._cond:
            return list(self._spans)

    def by_trace(self, trace_id: str) -> list[SpanRecord]:
        """The spans of one trace, in start order."""
        return sorted((s for s in self.spans() if s.trace_id == trace_id), key=lambda s: s.start_ns)

    def clear(self) -> None:
        with self._cond:
            self._spans.clear()

    def wait_for(
        self, predicate: Callable[[SpanRecord], bool], timeout: float = 10.0, *, count: int = 1
    ) -> list[SpanRecord]:
        """Block until `count` received spans match `predicate`; returns the matches.

        Raises TimeoutError listing what did arrive."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                matches = [s for s in self._spans if predicate(s)]
                if len(matches) >= count:
                    return matches
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(self._timeout_message(len(matches), count, timeout))
                self._cond.wait(left)

    async def wait_for_async(
        self, predicate: Callable[[SpanRecord], bool], timeout: float = 10.0, *, count: int = 1
    ) -> list[SpanRecord]:
        """`wait_for` for coroutines: polls without blocking the event loop."""
        deadline = time.monotonic() + timeout
        while True:
            matches = [s for s in self.spans() if predicate(s)]
            if len(matches) >= count:
                return matches
            if time.monotonic() >= deadline:
                raise TimeoutError(self._timeout_message(len(matches), count, timeout))
            await asyncio.sleep(0.02)

    def _timeout_message(self, got: int, count: int, timeout: float) -> str:
        names = sorted({f"{s.service}/{s.name}" for s in self.spans()})
        return (
            f"{got} of {count} matching span(s) after {timeout}s; "
            f"{self.export_calls} Export call(s), received: {', '.join(names) or 'nothing'}"
        )


def unused_endpoint() -> str:
    """A loopback HOST:PORT nothing listens on: a collector that is down."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"
