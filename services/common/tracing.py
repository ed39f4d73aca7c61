"""OpenTelemetry tracing for every service: one trace per turn, exported off the request path.

    tracing = setup_tracing("router", cfg.tracing)
    tracer = tracing.tracer(__name__)
    with tracer.start_as_current_span("switchyard.router.pick", context=extract(headers)):
        ...
    tracing.shutdown()                      # on SIGTERM; bounded, never raises

Choices:
- Envoy starts the trace and makes the sampling decision; our services follow it
  (`ParentBased(TraceIdRatioBased(sampling_ratio))`), so the ratio applies only to turns that reach
  us without a `traceparent`.
- Spans leave through `BatchSpanProcessor`s: `span.end()` only appends to a bounded in-memory queue
  (when it is full the oldest span is dropped) and a daemon thread exports. A slow or dead collector
  costs spans, never turns. The OTLP exporter's `timeout` bounds one export, retries included.
- `local_dir` also writes spans as JSON lines (`<local_dir>/<service>-<pid>.jsonl`, schema in
  `JsonlSpanExporter`) for `switchyard trace`, people without Jaeger, and tests.
- With neither OTLP nor `local_dir` the provider is the API's no-op one: spans cost next to nothing
  and an incoming `traceparent` still passes through `inject`.
- Nothing global is set unless asked (`set_global=True`): tests build several providers in one
  process, and services hand their tracer to whoever needs it.
- Propagation is W3C trace context only (`traceparent`, `tracestate`), the format Envoy speaks.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pydantic
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.config import StrictModel
from services.common.server import host_port

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_LOCAL_FILES: collections.Counter[str] = collections.Counter()  # per service, this process


class _Throttle(logging.Filter):
    """Lets each distinct message through at most once per `interval` seconds."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = str(record.msg), time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._last[key] = now
        return True


# The SDK's batch processor logs "Queue full, dropping Span." once per dropped span: under a
# burst with a dead collector that is thousands of lines, written on the request path.
logging.getLogger("opentelemetry.sdk._shared_internal").addFilter(_Throttle(30.0))


class TracingConfig(StrictModel):
    """Where spans go and how many of them; the default traces nothing."""

    # HOST:PORT of an OTLP/gRPC collector (Jaeger: port 4317); "" = no OTLP export.
    otlp_endpoint: str = ""
    # Fraction of turns traced when no caller (Envoy) decided already; a parent's decision wins.
    sampling_ratio: float = pydantic.Field(default=1.0, ge=0.0, le=1.0)
    # Also write spans here as JSON lines, one file per service process (`switchyard trace`).
    local_dir: Path | None = None
    # One OTLP export, retries included, gives up after this long (a dead collector costs this
    # much of the exporter thread's time per batch, never a turn's).
    export_timeout_seconds: float = pydantic.Field(default=1.0, gt=0.0, le=60.0)
    # Ended spans waiting for export; past this the oldest are dropped.
    max_queue_size: int = pydantic.Field(default=2048, ge=1)
    # Spans per export request, and how long the exporter waits to fill one.
    max_export_batch_size: int = pydantic.Field(default=512, ge=1)
    schedule_delay_ms: int = pydantic.Field(default=500, ge=1)
    # A local file is rotated (to `*.1.jsonl`, replacing the previous one) past this size.
    local_max_bytes: int = pydantic.Field(default=64 * 1024 * 1024, ge=1024)

    @pydantic.field_validator("otlp_endpoint")
    @classmethod
    def _endpoint_is_host_port(cls, v: str) -> str:
        if v:
            host_port(v)  # ValueError("address must be HOST:PORT, got ...")
        return v

    @pydantic.field_validator("max_export_batch_size")
    @classmethod
    def _batch_fits_queue(cls, v: int, info: pydantic.ValidationInfo) -> int:
        queue = info.data.get("max_queue_size")
        if queue is not None and v > queue:
            raise ValueError(f"must not exceed max_queue_size ({queue}), got {v}")
        return v

    @property
    def enabled(self) -> bool:
        return bool(self.otlp_endpoint or self.local_dir)


class Tracing:
    """A service's tracer provider, its exporters, and a bounded shutdown."""

    def __init__(
        self, service_name: str, provider: trace.TracerProvider, local_path: Path | None = None
    ) -> None:
        self.service_name = service_name
        self.provider = provider  # the API's no-op provider when tracing is off
        self.local_path = local_path  # the JSONL file this process writes, if any
        self._sdk = provider if isinstance(provider, TracerProvider) else None
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self._sdk is not None

    def tracer(self, name: str) -> trace.Tracer:
        return self.provider.get_tracer(name)

    def force_flush(self) -> bool:
        """Export everything queued now (blocks up to export_timeout_seconds per batch)."""
        return self._sdk.force_flush() if self._sdk is not None else True

    def shutdown(self, timeout_seconds: float = 3.0) -> None:
        """Export what is queued and stop, waiting at most `timeout_seconds`; never raises.

        Blocking: from a coroutine use `await asyncio.to_thread(tracing.shutdown)`."""
        if self._closed or self._sdk is None:
            return
        self._closed = True
        # The SDK's own shutdown waits up to 30 s per processor on a slow collector; run it
        # on a daemon thread so a stopping service is held at most `timeout_seconds`.
        t = threading.Thread(
            target=_shutdown, args=(self._sdk,), name="tracing-shutdown", daemon=True
        )
        t.start()
        t.join(timeout_seconds)
        if t.is_alive():
            log.warning(
                "tracing: still exporting after %.1fs at shutdown; giving up", timeout_seconds
            )


def _shutdown(provider: TracerProvider) -> None:
    try:
        provider.shutdown()
    except Exception:
        log.exception("tracing: shutdown failed")


def setup_tracing(
    service_name: str,
    cfg: TracingConfig,
    *,
    resource_attributes: Mapping[str, str | int | float | bool] | None = None,
    set_global: bool = False,
) -> Tracing:
    """Build the tracer provider for one service process (see the module docstring)."""
    if not cfg.enabled:
        return Tracing(service_name, trace.NoOpTracerProvider())
    resource = Resource.create(
        {"service.name": service_name, "process.pid": os.getpid(), **(resource_attributes or {})}
    )
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(cfg.sampling_ratio)),
        resource=resource,
        shutdown_on_exit=False,  # Tracing.shutdown bounds the wait; atexit would not
    )
    exporters: list[SpanExporter] = []
    if cfg.otlp_endpoint:
        exporters.append(_otlp_exporter(cfg))
    local_path = None
    if cfg.local_dir is not None:
        local_path = local_file(cfg.local_dir, service_name)
        exporters.append(JsonlSpanExporter(local_path, max_bytes=cfg.local_max_bytes))
    for exporter in exporters:
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=cfg.max_queue_size,
                schedule_delay_millis=cfg.schedule_delay_ms,
                max_export_batch_size=cfg.max_export_batch_size,
                export_timeout_millis=cfg.export_timeout_seconds * 1000,
            )
        )
    if set_global:
        trace.set_tracer_provider(provider)
    return Tracing(service_name, provider, local_path)


def _otlp_exporter(cfg: TracingConfig) -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as e:
        # xds-protos ships an old copy of opentelemetry/proto/* and overwrites the real one
        # when pip installs it later (grpc/grpc#42926).
        raise ImportError(
            f"the OTLP exporter does not import ({e}); if xds-protos overwrote opentelemetry-"
            "proto, run: pip install --force-reinstall --no-deps opentelemetry-proto"
        ) from e
    return OTLPSpanExporter(
        endpoint=cfg.otlp_endpoint, insecure=True, timeout=cfg.export_timeout_seconds
    )


# --- propagation ---------------------------------------------------------------------------


def extract(
    carrier: Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes]],
    context: Context | None = None,
) -> Context:
    """The caller's trace context from W3C `traceparent`/`tracestate` headers or gRPC metadata.

    Takes a dict (ext_proc request headers) or pairs (`context.invocation_metadata()`); keys
    are matched case-insensitively. Without a valid `traceparent` the result has no parent, so
    a span started in it begins a new trace."""
    items = carrier.items() if isinstance(carrier, Mapping) else carrier
    headers: dict[str, str] = {}
    for key, value in items:
        k = key.lower()
        if k in ("traceparent", "tracestate"):
            headers[k] = value.decode("latin-1") if isinstance(value, bytes) else value
    return _PROPAGATOR.extract(headers, context=context)


def inject(context: Context | None = None) -> list[tuple[str, str]]:
    """gRPC metadata (`traceparent`, `tracestate`) for the span current in `context`
    (default: the current context); empty when there is no valid span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return list(carrier.items())


def trace_id_hex(span: trace.Span | None = None) -> str:
    """32 hex digits of `span`'s (default: the current span's) trace id; "" when it has none."""
    ctx = (span if span is not None else trace.get_current_span()).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


# --- local JSON lines ----------------------------------------------------------------------


def local_file(directory: Path, service_name: str) -> Path:
    """`<dir>/<service>-<pid>.jsonl`; a second provider in the same process gets `-<n>`."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", service_name) or "service"
    n = _LOCAL_FILES[safe]
    _LOCAL_FILES[safe] += 1
    suffix = f"-{n}" if n else ""
    return Path(directory).expanduser() / f"{safe}-{os.getpid()}{suffix}.jsonl"


def span_to_json(span: ReadableSpan) -> dict[str, Any]:
    """One line of a local trace file (read back by `services.mesh.trace`)."""
    ctx = span.get_span_context()
    parent = span.parent
    attrs = span.resource.attributes
    status = span.status
    return {
        "trace_id": format(ctx.trace_id, "032x") if ctx else "",
        "span_id": format(ctx.span_id, "016x") if ctx else "",
        "parent_span_id": format(parent.span_id, "016x") if parent else "",
        "name": span.name,
        "service": str(attrs.get("service.name", "")),
        "instance": str(attrs.get("service.instance.id", "")),
        "kind": span.kind.name,
        "start_ns": span.start_time or 0,
        "end_ns": span.end_time or 0,
        "status": status.status_code.name,
        "status_message": status.description or "",
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in span.events
        ],
    }


class JsonlSpanExporter(SpanExporter):
    """Appends spans to a file, one JSON object a line (see `span_to_json`).

    Runs on the batch processor's thread. Past `max_bytes` the file moves to `<name>.1.jsonl`
    (replacing the previous one), so a process keeps at most about twice that."""

    def __init__(self, path: Path, *, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._failed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        text = "".join(
            json.dumps(span_to_json(s), separators=(",", ":"), default=str) + "\n" for s in spans
        )
        with self._lock:
            try:
                f = self._open()
                f.write(text)
                f.flush()
                if f.tell() > self.max_bytes:
                    self._rotate()
            except OSError as e:
                if not self._failed:  # say it once, not once a batch
                    log.warning("tracing: cannot write %s: %s", self.path, e)
                self._failed = True
                return SpanExportResult.FAILURE
        self._failed = False
        return SpanExportResult.SUCCESS

    def _open(self) -> IO[str]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        return self._file

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.replace(self.path.with_suffix(".1.jsonl"))

    def shutdown(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
