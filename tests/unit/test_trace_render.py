"""`switchyard trace`: local span files read back, the tree rebuilt, the waterfall drawn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.common.tracing import TracingConfig, extract, inject, setup_tracing, trace_id_hex
from services.mesh.trace import (
    AmbiguousTraceId,
    TraceError,
    TraceNotFound,
    format_trace_list,
    list_traces,
    render_trace,
)

TID = "4bf92f3577b34da6a3ce929d0e0e4736"
T0 = 1_700_000_000_000_000_000  # ns


def span(
    name: str,
    span_id: str,
    parent: str = "",
    start_ms: float = 0,
    dur_ms: float = 10,
    *,
    service: str = "router",
    trace_id: str = TID,
    status: str = "UNSET",
    **attributes: Any,
) -> dict[str, Any]:
    return {
        "trace_id": trace_id,
        "span_id": span_id.rjust(16, "0"),
        "parent_span_id": parent.rjust(16, "0") if parent else "",
        "name": name,
        "service": service,
        "kind": "INTERNAL",
        "start_ns": T0 + int(start_ms * 1e6),
        "end_ns": T0 + int((start_ms + dur_ms) * 1e6),
        "status": status,
        "status_message": "boom" if status == "ERROR" else "",
        "attributes": {k.replace("__", "."): v for k, v in attributes.items()},
        "events": [],
    }


def write(directory: Path, spans: list[dict[str, Any]], name: str = "svc-1.jsonl") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with path.open("a") as f:
        for s in spans:
            f.write(json.dumps(s) + "\n")
    return directory


def turn() -> list[dict[str, Any]]:
    """One turn as the mesh records it (Envoy's gateway span included), 100 ms long."""
    return [
        span("ingress", "a", "", 0, 100, service="envoy", http__method="POST"),
        span(
            "switchyard.router.pick",
            "b",
            "a",
            1,
            2,
            gen_ai__request__model="small",
            switchyard__router__endpoint="e0",
            other__noise="x",
        ),
        span("switchyard.engine.generate", "c", "a", 5, 90, service="engine"),
        span("switchyard.engine.queue", "d", "c", 5, 5, service="engine"),
        span("switchyard.engine.prefill", "e", "c", 10, 10, service="engine"),
        span(
            "switchyard.engine.decode",
            "f",
            "c",
            50,
            45,
            service="engine",
            gen_ai__usage__output_tokens=48,
        ),
        span("switchyard.safety.scan", "g", "a", 96, 4, service="safety", status="ERROR"),
    ]


def body(text: str) -> list[str]:
    """The span lines (after the two header lines and the column titles)."""
    return text.splitlines()[3:]


def test_waterfall_draws_the_tree_in_start_order(tmp_path: Path) -> None:
    out = render_trace(TID, write(tmp_path, turn()), width=160)
    header, _, columns, *_ = out.splitlines()
    assert header.startswith(f"trace {TID} · 7 span(s) · engine, envoy, router, safety · 100.0 ms")
    assert "SERVICE" in columns and "START ms" in columns and columns.endswith("100.0 ms")
    lines = body(out)
    labels = [line.split("|")[0].split(None, 1)[1].rsplit(None, 2)[0] for line in lines]
    assert labels == [
        "ingress",
        "├─ switchyard.router.pick",
        "├─ switchyard.engine.generate",
        "│  ├─ switchyard.engine.queue",
        "│  ├─ switchyard.engine.prefill",
        "│  └─ switchyard.engine.decode",
        "└─ switchyard.safety.scan",
    ]
    assert [line.split()[0] for line in lines] == [
        "envoy",
        "router",
        "engine",
        "engine",
        "engine",
        "engine",
        "safety",
    ]


def test_lines_show_offsets_durations_and_scaled_bars(tmp_path: Path) -> None:
    lines = body(render_trace(TID, write(tmp_path, turn()), width=160))
    decode = next(line for line in lines if "engine.decode" in line)
    start, dur = decode.split("|")[0].split()[-2:]
    assert (start, dur) == ("50.0", "45.0")
    bars = [line.split("|")[-2] if line.count("|") >= 2 else "" for line in lines]
    width = len(bars[0])
    assert bars[0] == "█" * width  # the root spans the whole turn
    decode_bar = bars[lines.index(decode)]
    first = decode_bar.index("█")
    last = len(decode_bar.rstrip())
    assert abs(first - width * 0.50) <= 1 and abs(last - width * 0.95) <= 1  # 50 ms .. 95 ms
    assert set(decode_bar[first:last]) == {"█"} and decode_bar[:first].strip() == ""


def test_key_attributes_are_shown_shortened(tmp_path: Path) -> None:
    lines = body(render_trace(TID, write(tmp_path, turn()), width=200))
    pick = next(line for line in lines if "router.pick" in line)
    assert "router.endpoint=e0" in pick and "request.model=small" in pick
    assert "noise" not in pick
    assert pick.index("router.endpoint") < pick.index("request.model")  # switchyard.* first
    assert "output_tokens=48" in next(line for line in lines if "decode" in line)
    assert "ERROR: boom" in next(line for line in lines if "safety.scan" in line)


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_lines_fit_the_width(tmp_path: Path, width: int) -> None:
    out = render_trace(TID, write(tmp_path, turn()), width=width)
    assert all(len(line) <= width for line in body(out))


def test_a_unique_prefix_finds_the_trace(tmp_path: Path) -> None:
    other = [span("other", "1", trace_id="ffff" + TID[4:])]
    directory = write(tmp_path, [*turn(), *other])
    assert render_trace(TID[:6].upper(), directory, width=120) == render_trace(
        TID, directory, width=120
    )


def test_an_ambiguous_prefix_lists_the_candidates(tmp_path: Path) -> None:
    twin = TID[:4] + "0" * 28
    directory = write(tmp_path, [*turn(), span("other", "1", trace_id=twin)])
    with pytest.raises(AmbiguousTraceId, match=rf"{TID[:4]} matches 2 traces: .*{twin}"):
        render_trace(TID[:4], directory)


def test_not_found_names_the_id_and_the_directory(tmp_path: Path) -> None:
    directory = write(tmp_path, turn())
    with pytest.raises(TraceNotFound, match=rf"trace deadbeef not found in {tmp_path}"):
        render_trace("deadbeef", directory)
    with pytest.raises(TraceNotFound, match=rf"no trace directory {tmp_path / 'nope'}"):
        render_trace(TID, tmp_path / "nope")
    with pytest.raises(TraceError, match="not a trace id: 'xyz'"):
        render_trace("xyz", directory)


def test_spans_whose_parent_is_elsewhere_are_marked(tmp_path: Path) -> None:
    # Without Envoy's span (exported over OTLP only), the services' spans have no local parent.
    directory = write(tmp_path, turn()[1:])
    out = render_trace(TID, directory, width=120)
    assert "⋯ switchyard.router.pick" in out and "⋯ switchyard.engine.generate" in out
    assert "parent span not in the local files" in out


def test_spans_from_several_files_and_bad_lines(tmp_path: Path) -> None:
    spans = turn()
    write(tmp_path, spans[:3], "router-1.jsonl")
    write(tmp_path, spans[3:], "engine-2.jsonl")
    with (tmp_path / "engine-2.jsonl").open("a") as f:
        f.write('not json\n{"trace_id": "' + TID + '"}\n{"trace_id": "4bf9')  # half a line
    assert len(body(render_trace(TID, tmp_path, width=120))) == 7


def test_list_traces_newest_first(tmp_path: Path) -> None:
    older = [span("old-root", "1", "", -5000, 20, trace_id="1" * 32)]
    write(tmp_path, [*turn(), *older])
    traces = list_traces(tmp_path, limit=10)
    assert [t.trace_id for t in traces] == [TID, "1" * 32]
    assert (traces[0].root, traces[0].service, traces[0].spans) == ("ingress", "envoy", 7)
    assert traces[0].duration_ms == pytest.approx(100.0)
    assert list_traces(tmp_path, limit=1) == traces[:1]
    table = format_trace_list(traces)
    assert table.splitlines()[1].startswith(TID) and "ingress (envoy)" in table
    assert list_traces(tmp_path / "nope") == []


def test_spans_written_by_services_render(tmp_path: Path) -> None:
    """The writer (services.common.tracing) and the reader agree, across two services."""
    router = setup_tracing("router", TracingConfig(local_dir=tmp_path))
    engine = setup_tracing("engine", TracingConfig(local_dir=tmp_path))
    with router.tracer("r").start_as_current_span("switchyard.router.pick") as pick:
        metadata = inject()
    tracer = engine.tracer("e")
    with tracer.start_as_current_span("switchyard.engine.generate", context=extract(metadata)):
        with tracer.start_as_current_span("switchyard.engine.decode"):
            pass
    router.shutdown()
    engine.shutdown()

    out = render_trace(trace_id_hex(pick)[:10], tmp_path, width=120)
    labels = [line.split("|")[0] for line in body(out)]
    assert "switchyard.router.pick" in labels[0] and labels[0].startswith("router")
    assert "└─ switchyard.engine.generate" in labels[1] and labels[1].startswith("engine")
    assert "   └─ switchyard.engine.decode" in labels[2]
    assert [t.trace_id for t in list_traces(tmp_path, 5)] == [trace_id_hex(pick)]
