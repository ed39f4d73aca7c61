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

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from services.mesh.otlp_sink import SpanRecord, decode

__all__ = ["OtlpCollector", "SpanRecord", "unused_endpoint"]


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

    def restart(self) -> None:
        """Listen again on the same port (after `stop`), answering at once."""
        self._address = self.endpoint
        self.delay_seconds = 0.0
        self.start()

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
