"""Tracing setup, W3C propagation, and export to a real OTLP/gRPC collector (in-test)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

from services.common.config import parse_config
from services.common.errors import ConfigError
from services.common.tracing import (
    Tracing,
    TracingConfig,
    extract,
    inject,
    setup_tracing,
    trace_id_hex,
)
from tests.otlp_collector import OtlpCollector, unused_endpoint

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-01"
NOT_SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-00"


@pytest.fixture
def collector() -> Iterator[OtlpCollector]:
    with OtlpCollector() as c:
        yield c


@pytest.fixture
def tracings() -> Iterator[list[Tracing]]:
    """Shut down whatever a test set up, even when it fails."""
    made: list[Tracing] = []
    yield made
    for t in made:
        t.shutdown(timeout_seconds=0.5)


def make_tracing(
    made: list[Tracing],
    service: str = "router",
    resource: dict[str, str] | None = None,
    **cfg: Any,
) -> Tracing:
    config = TracingConfig(**{"schedule_delay_ms": 20, **cfg})
    tracing = setup_tracing(service, config, resource_attributes=resource)
    made.append(tracing)
    return tracing


def burst(tracer: trace.Tracer, n: int = 1000) -> tuple[float, float]:
    """End `n` spans; returns (total, slowest single end()) in seconds."""
    slowest = 0.0
    t0 = time.perf_counter()
    for i in range(n):
        span = tracer.start_span("burst", attributes={"i": i})
        t = time.perf_counter()
        span.end()
        slowest = max(slowest, time.perf_counter() - t)
    return time.perf_counter() - t0, slowest


# --- config --------------------------------------------------------------------------------


def test_default_config_traces_nothing_but_passes_the_callers_trace_on() -> None:
    tracing = setup_tracing("router", TracingConfig())
    assert not tracing.enabled
    tracer = tracing.tracer("t")
    with tracer.start_as_current_span("x", context=extract({"traceparent": SAMPLED})) as span:
        assert not span.is_recording()
        assert inject() == [("traceparent", SAMPLED)]
    tracing.shutdown()


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"sampling_ratio": 1.5}, "sampling_ratio"),
        ({"sampling_ratio": -0.1}, "sampling_ratio"),
        ({"otlp_endpoint": "localhost"}, "otlp_endpoint"),
        ({"otlp_endpoint": "http://jaeger"}, "otlp_endpoint"),
        ({"export_timeout_seconds": 0}, "export_timeout_seconds"),
        ({"max_queue_size": 0}, "max_queue_size"),
        ({"max_queue_size": 10, "max_export_batch_size": 11}, "max_export_batch_size"),
        ({"sampling_rate": 0.5}, "sampling_rate"),
    ],
)
def test_config_errors_name_the_field(override: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"tracing.yaml: {field}:"):
        parse_config(override, TracingConfig, "tracing.yaml")


def test_config_accepts_a_collector_and_a_directory(tmp_path: Path) -> None:
    cfg = parse_config(
        {"otlp_endpoint": "jaeger:4317", "sampling_ratio": 0.25, "local_dir": str(tmp_path)},
        TracingConfig,
    )
    assert cfg.enabled and cfg.local_dir == tmp_path and cfg.export_timeout_seconds == 1.0


# --- export over OTLP/gRPC -----------------------------------------------------------------


def test_spans_reach_the_collector_with_service_parent_and_attributes(
    collector: OtlpCollector, tracings: list[Tracing]
) -> None:
    tracing = make_tracing(
        tracings,
        "router",
        resource={"service.instance.id": "router-0"},
        otlp_endpoint=collector.endpoint,
    )
    tracer = tracing.tracer("test")
    with tracer.start_as_current_span("root", kind=trace.SpanKind.SERVER) as root:
        with tracer.start_as_current_span(
            "switchyard.router.pick",
            attributes={"gen_ai.request.model": "small", "switchyard.candidates": 3, "ok": True},
        ):
            pass
    [pick] = collector.wait_for(lambda s: s.name == "switchyard.router.pick")
    [got_root] = collector.wait_for(lambda s: s.name == "root")
    assert pick.service == got_root.service == "router"
    assert pick.trace_id == got_root.trace_id == trace_id_hex(root)
    assert pick.parent_span_id == got_root.span_id and got_root.parent_span_id == ""
    assert pick.attributes == {
        "gen_ai.request.model": "small",
        "switchyard.candidates": 3,
        "ok": True,
    }
    assert got_root.kind == "SERVER" and pick.kind == "INTERNAL"
    assert got_root.resource["process.pid"] == os.getpid()
    assert got_root.resource["service.instance.id"] == "router-0"
    assert [s.name for s in collector.by_trace(pick.trace_id)] == ["root", "switchyard.router.pick"]


def test_error_status_is_exported(collector: OtlpCollector, tracings: list[Tracing]) -> None:
    tracer = make_tracing(tracings, otlp_endpoint=collector.endpoint).tracer("test")
    with pytest.raises(RuntimeError), tracer.start_as_current_span("fails"):
        raise RuntimeError("engine died")
    [span] = collector.wait_for(lambda s: s.name == "fails")
    assert span.status == "ERROR" and "engine died" in span.status_message


def test_propagation_round_trip_across_two_services(
    collector: OtlpCollector, tracings: list[Tracing]
) -> None:
    router = make_tracing(tracings, "router", otlp_endpoint=collector.endpoint).tracer("r")
    engine = make_tracing(tracings, "engine", otlp_endpoint=collector.endpoint).tracer("e")
    with router.start_as_current_span("switchyard.router.pick") as pick:
        metadata = inject()
    assert dict(metadata).keys() == {"traceparent"}
    # What a servicer gets: context.invocation_metadata() pairs, other keys around it.
    incoming = [("authorization", "Bearer k"), *metadata, ("x-session-id", "s1")]
    with engine.start_as_current_span("switchyard.engine.queue", context=extract(incoming)):
        pass
    [queue] = collector.wait_for(lambda s: s.name == "switchyard.engine.queue")
    assert queue.service == "engine"
    assert queue.trace_id == trace_id_hex(pick)
    assert queue.parent_span_id == format(pick.get_span_context().span_id, "016x")


@pytest.mark.parametrize(
    "carrier",
    [
        {"traceparent": SAMPLED},
        {"Traceparent": SAMPLED, "TraceState": "vendor=1"},  # HTTP header case
        {"traceparent": SAMPLED.encode()},  # ext_proc raw_value bytes
        [("TRACEPARENT", SAMPLED)],  # metadata pairs
    ],
)
def test_extract_reads_w3c_headers_in_any_case(carrier: Any) -> None:
    ctx = trace.get_current_span(extract(carrier)).get_span_context()
    assert ctx.is_valid and ctx.is_remote
    assert format(ctx.trace_id, "032x") == TRACE_ID and format(ctx.span_id, "016x") == PARENT_ID


def test_tracestate_is_passed_on(tracings: list[Tracing], tmp_path: Path) -> None:
    tracer = make_tracing(tracings, local_dir=tmp_path).tracer("t")
    ctx = extract({"traceparent": SAMPLED, "tracestate": "envoy=abc"})
    with tracer.start_as_current_span("x", context=ctx):
        md = dict(inject())
    assert md["traceparent"].startswith(f"00-{TRACE_ID}-") and md["tracestate"] == "envoy=abc"


@pytest.mark.parametrize("carrier", [{}, {"traceparent": "00-zzz-1-01"}, {"other": "x"}])
def test_without_a_valid_traceparent_a_new_trace_begins(
    carrier: dict[str, str], tracings: list[Tracing], tmp_path: Path
) -> None:
    tracer = make_tracing(tracings, local_dir=tmp_path).tracer("t")
    with tracer.start_as_current_span("x", context=extract(carrier)) as span:
        assert span.is_recording() and trace_id_hex(span) != TRACE_ID
        assert span.parent is None  # type: ignore[attr-defined]


def test_trace_id_hex() -> None:
    assert trace_id_hex() == ""  # no current span
    assert trace_id_hex(trace.get_current_span(extract({"traceparent": SAMPLED}))) == TRACE_ID


def test_sampling_follows_the_callers_decision(
    collector: OtlpCollector, tracings: list[Tracing]
) -> None:
    tracing = make_tracing(tracings, otlp_endpoint=collector.endpoint, sampling_ratio=0.0)
    tracer = tracing.tracer("t")
    with tracer.start_as_current_span("own-root"):  # ratio 0: not sampled
        pass
    with tracer.start_as_current_span("envoy-sampled", context=extract({"traceparent": SAMPLED})):
        pass
    with tracer.start_as_current_span(
        "envoy-dropped", context=extract({"traceparent": NOT_SAMPLED})
    ):
        pass
    assert tracing.force_flush()
    assert [s.name for s in collector.spans()] == ["envoy-sampled"]


async def test_collector_works_from_async_tests(
    collector: OtlpCollector, tracings: list[Tracing]
) -> None:
    tracer = make_tracing(tracings, otlp_endpoint=collector.endpoint).tracer("t")
    with tracer.start_as_current_span("async-span"):
        pass
    [span] = await collector.wait_for_async(lambda s: s.name == "async-span", timeout=5)
    assert span.service == "router"


# --- a slow or dead collector never holds a turn -------------------------------------------


def test_a_collector_that_is_down_blocks_nothing(tracings: list[Tracing]) -> None:
    tracing = make_tracing(tracings, otlp_endpoint=unused_endpoint(), max_export_batch_size=100)
    total, slowest = burst(tracing.tracer("t"))
    assert total < 1.0, f"1,000 spans took {total:.3f}s with the collector down"
    assert slowest < 0.1
    t = time.perf_counter()
    tracing.shutdown(timeout_seconds=0.5)
    assert time.perf_counter() - t < 1.5


def test_a_slow_collector_blocks_nothing_and_still_gets_spans(
    collector: OtlpCollector, tracings: list[Tracing]
) -> None:
    collector.delay_seconds = 2.0
    tracing = make_tracing(
        tracings,
        otlp_endpoint=collector.endpoint,
        export_timeout_seconds=5,
        max_queue_size=200,  # the burst overflows it: spans are dropped, ends never wait
        max_export_batch_size=100,
    )
    total, slowest = burst(tracing.tracer("t"))
    assert total < 1.0, f"1,000 spans took {total:.3f}s with a slow collector"
    assert slowest < 0.1
    assert collector.wait_for(lambda s: s.name == "burst", timeout=10)
    t = time.perf_counter()
    tracing.shutdown(timeout_seconds=0.5)
    assert time.perf_counter() - t < 1.5


def test_an_export_timeout_is_bounded_by_the_config(
    collector: OtlpCollector, tracings: list[Tracing]
) -> None:
    """Slower than export_timeout_seconds: the export gives up, nothing is recorded."""
    collector.delay_seconds = 3.0
    tracing = make_tracing(tracings, otlp_endpoint=collector.endpoint, export_timeout_seconds=0.3)
    with tracing.tracer("t").start_as_current_span("late"):
        pass
    t = time.perf_counter()
    tracing.force_flush()
    assert time.perf_counter() - t < 2.0
    assert collector.export_calls >= 1 and collector.spans() == []


# --- local JSON lines ----------------------------------------------------------------------


def test_local_files_hold_one_json_span_a_line(tmp_path: Path, tracings: list[Tracing]) -> None:
    tracing = make_tracing(tracings, "local-writer", local_dir=tmp_path / "traces")
    tracer = tracing.tracer("t")
    with tracer.start_as_current_span("parent") as parent:
        with tracer.start_as_current_span("child", attributes={"gen_ai.usage.input_tokens": 7}):
            pass
    tracing.shutdown()
    assert tracing.local_path == tmp_path / "traces" / f"local-writer-{os.getpid()}.jsonl"
    rows = [json.loads(line) for line in tracing.local_path.read_text().splitlines()]
    by_name = {r["name"]: r for r in rows}
    assert by_name.keys() == {"parent", "child"}
    child = by_name["child"]
    assert child["trace_id"] == trace_id_hex(parent) and child["service"] == "local-writer"
    assert child["parent_span_id"] == by_name["parent"]["span_id"]
    assert child["attributes"] == {"gen_ai.usage.input_tokens": 7}
    assert child["start_ns"] <= child["end_ns"] and child["status"] == "UNSET"


def test_two_providers_of_one_service_write_apart(tmp_path: Path, tracings: list[Tracing]) -> None:
    a = make_tracing(tracings, "twin", local_dir=tmp_path)
    b = make_tracing(tracings, "twin", local_dir=tmp_path)
    assert a.local_path != b.local_path


def test_a_full_local_file_rotates(tmp_path: Path, tracings: list[Tracing]) -> None:
    tracing = make_tracing(
        tracings, "rotating", local_dir=tmp_path, local_max_bytes=1024, max_export_batch_size=2
    )
    burst(tracing.tracer("t"), 50)
    tracing.shutdown()
    assert tracing.local_path is not None
    assert tracing.local_path.with_suffix(".1.jsonl").exists()
    kept = sum(len(p.read_text().splitlines()) for p in tmp_path.glob("rotating-*"))
    assert 0 < kept < 50  # the oldest spans went with the rotated-out file
