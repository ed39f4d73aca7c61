"""`switchyard trace`: a turn's spans from the local trace files, drawn as a terminal waterfall.

Services started with `tracing.local_dir` write their spans as JSON lines
(`services.common.tracing.JsonlSpanExporter`, one file per process). This module reads every
`*.jsonl` file of such a directory, finds one trace (full 32-hex id or a unique prefix), rebuilds
the parent/child tree and renders one line per span:

    service  span (indented by depth)   start ms  dur ms  |   ████████        | key attributes

A span whose parent is not in the files (not exported yet, or sent elsewhere) is drawn as a
root marked `⋯`. `list_traces` summarises the most recent traces for `switchyard trace` alone.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from services.common.files import home_path

# Attributes worth a place on the line, most telling first; the rest stay in the files.
KEY_ATTRIBUTE_PREFIXES = ("switchyard.", "gen_ai.", "rpc.", "grpc.", "http.", "upstream_")
# These namespaces are dropped from the key on screen (gen_ai.request.model -> request.model).
_SHORTENED = ("switchyard.", "gen_ai.")
_ORPHAN = "⋯ "
_MAX_VALUE = 28


class TraceError(Exception):
    """A trace cannot be shown; the message says which id and where it looked."""


class TraceNotFound(TraceError):
    pass


class AmbiguousTraceId(TraceError):
    pass


@dataclass
class Span:
    """One span as the local files hold it, plus its children once the tree is built."""

    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    name: str
    service: str
    start_ns: int
    end_ns: int
    status: str = "UNSET"  # "UNSET", "OK", "ERROR"
    status_message: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    children: list[Span] = field(default_factory=list)
    orphan: bool = False  # has a parent that is not in the files

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Span:
        return cls(
            trace_id=str(d["trace_id"]).lower(),
            span_id=str(d["span_id"]).lower(),
            parent_span_id=str(d.get("parent_span_id") or "").lower(),
            name=str(d["name"]),
            service=str(d.get("service") or "?"),
            start_ns=int(d["start_ns"]),
            end_ns=int(d["end_ns"]),
            status=str(d.get("status") or "UNSET"),
            status_message=str(d.get("status_message") or ""),
            attributes=dict(d.get("attributes") or {}),
        )

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)


@dataclass(frozen=True)
class TraceSummary:
    trace_id: str
    root: str  # the root span's name ("⋯ name" when its parent is not local)
    service: str  # the root span's service
    start_ns: int
    duration_ms: float
    spans: int


def default_traces_dir() -> Path:
    """$SWITCHYARD_TRACES, else $SWITCHYARD_HOME/traces (~/.cache/switchyard/traces)."""
    return home_path("traces", "SWITCHYARD_TRACES")


# --- reading -------------------------------------------------------------------------------


def read_spans(directory: Path, contains: str = "") -> list[Span]:
    """Every span in `directory/*.jsonl` (skipping lines without `contains`, a cheap filter).

    Lines that are not a span (a half-written last line, say) are skipped; a span written twice
    is kept once."""
    spans: dict[tuple[str, str], Span] = {}
    for line in _lines(Path(directory)):
        if contains and contains not in line:
            continue
        try:
            span = Span.from_json(json.loads(line))
        except (ValueError, KeyError, TypeError):
            continue
        spans.setdefault((span.trace_id, span.span_id), span)
    return list(spans.values())


def _lines(directory: Path) -> Iterator[str]:
    for path in sorted(directory.glob("*.jsonl")):
        try:
            with path.open(encoding="utf-8", errors="replace") as f:
                yield from f
        except OSError:
            continue  # rotated away while we read


def find_trace(trace_id: str, directory: Path) -> list[Span]:
    """The spans of the one trace whose id is or starts with `trace_id`."""
    prefix = trace_id.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{1,32}", prefix):
        raise TraceError(f"not a trace id: {trace_id!r} (expected up to 32 hex digits)")
    directory = Path(directory)
    if not directory.is_dir():
        raise TraceNotFound(f"trace {prefix} not found: no trace directory {directory}")
    spans = [s for s in read_spans(directory, prefix) if s.trace_id.startswith(prefix)]
    ids = sorted({s.trace_id for s in spans})
    if not ids:
        raise TraceNotFound(f"trace {prefix} not found in {directory}")
    if len(ids) > 1:
        shown = ", ".join(ids[:5]) + (", …" if len(ids) > 5 else "")
        raise AmbiguousTraceId(f"trace id prefix {prefix} matches {len(ids)} traces: {shown}")
    return spans


def build_tree(spans: list[Span]) -> list[Span]:
    """Link children to parents (both in start order); returns the roots in start order."""
    by_id = {s.span_id: s for s in spans}
    for s in spans:
        s.children = []
    roots: list[Span] = []
    for s in sorted(spans, key=lambda s: (s.start_ns, s.end_ns)):
        parent = by_id.get(s.parent_span_id) if s.parent_span_id != s.span_id else None
        s.orphan = parent is None and bool(s.parent_span_id)
        (parent.children if parent is not None else roots).append(s)
    reached = {id(s) for s in _walk(roots)}
    for s in spans:
        if id(s) not in reached:  # in a parent cycle (corrupt data): cut it, show it as a root
            by_id[s.parent_span_id].children.remove(s)
            s.orphan = True
            roots.append(s)
            reached |= {id(x) for x in _walk([s])}
    return roots


def _walk(roots: list[Span]) -> Iterator[Span]:
    seen: set[int] = set()
    stack = list(reversed(roots))
    while stack:
        s = stack.pop()
        if id(s) in seen:
            continue
        seen.add(id(s))
        yield s
        stack.extend(reversed(s.children))


# --- rendering -----------------------------------------------------------------------------


def render_trace(trace_id: str, directory: Path, width: int | None = None) -> str:
    """The waterfall of one trace (see the module docstring); raises TraceError."""
    return format_waterfall(find_trace(trace_id, directory), width)


def format_waterfall(spans: list[Span], width: int | None = None) -> str:
    width = width or shutil.get_terminal_size((120, 24)).columns
    roots = build_tree(spans)
    rows = list(_rows(roots))
    t0 = min(s.start_ns for s in spans)
    t1 = max(max(s.end_ns, s.start_ns) for s in spans)
    total = max(t1 - t0, 1)

    svc_w = max(min(max(len(s.service) for s, _ in rows), 16), len("SERVICE"))
    fixed_w = svc_w + 1 + 2 + 9 + 9  # all of the left part but the span names
    # Names give way to a bar of at least 10 cells, down to 16 characters.
    name_w = min(max(len(tree) + len(s.name) for s, tree in rows), 48)
    name_w = max(16, min(name_w, width - fixed_w - 12 - 1))
    left_w = fixed_w + name_w
    attrs = [_key_attributes(s) for s, _ in rows]
    avail = max(width - left_w - 3, 10)
    bar_w = max(10, avail // 2 if any(attrs) else avail)
    attr_w = width - left_w - bar_w - 3

    services = sorted({s.service for s in spans})
    lines = [
        f"trace {spans[0].trace_id} · {len(spans)} span(s) · {', '.join(services)} · "
        f"{total / 1e6:.1f} ms · {_clock(t0)}",
        "",
        f"{'SERVICE':<{svc_w}} {'SPAN':<{name_w}}  {'START ms':>8} {'DUR ms':>8} "
        + _scale(bar_w, total),
    ]
    lines[-1] = lines[-1].rstrip()
    for (s, tree), attr in zip(rows, attrs, strict=True):
        label = _fit_name(tree + (_ORPHAN if s.orphan else ""), s.name, name_w)
        line = (
            f"{_fit(s.service, svc_w):<{svc_w}} {label:<{name_w}}  "
            f"{(s.start_ns - t0) / 1e6:>8.1f} {s.duration_ns / 1e6:>8.1f} "
            f"|{_bar(s.start_ns - t0, s.end_ns - t0, total, bar_w)}|"
        )
        if attr and attr_w >= 12:
            line += " " + _fit(attr, attr_w)
        lines.append(line[:width].rstrip())
    if any(s.orphan for s, _ in rows):
        lines += [
            "",
            f"{_ORPHAN.strip()} parent span not in the local files (not exported yet, or sent "
            "to another collector)",
        ]
    return "\n".join(lines)


def _rows(roots: list[Span]) -> Iterator[tuple[Span, str]]:
    """(span, tree drawing before its name) in depth-first order."""
    seen: set[int] = set()

    def visit(s: Span, lead: str, tail: str) -> Iterator[tuple[Span, str]]:
        if id(s) in seen:
            return
        seen.add(id(s))
        yield s, lead
        for i, c in enumerate(s.children):
            last = i == len(s.children) - 1
            yield from visit(
                c, tail + ("└─ " if last else "├─ "), tail + ("   " if last else "│  ")
            )

    for r in roots:
        yield from visit(r, "", "")


def _bar(start: int, end: int, total: int, cells: int) -> str:
    a = min(int(start / total * cells), cells - 1)
    b = min(max(a + 1, math.ceil(end / total * cells - 1e-9)), cells)
    return " " * a + "█" * (b - a) + " " * (cells - b)


def _scale(cells: int, total: int) -> str:
    right = f"{total / 1e6:.1f} ms"
    return f" 0{right:>{cells - 1}}" if cells > len(right) + 2 else ""


def _key_attributes(s: Span) -> str:
    parts = []
    if s.status == "ERROR":
        parts.append(f"ERROR{': ' + s.status_message if s.status_message else ''}")
    ranked = sorted(
        (rank, key, value)
        for key, value in s.attributes.items()
        for rank, p in enumerate(KEY_ATTRIBUTE_PREFIXES)
        if key.startswith(p)
    )
    for _rank, key, value in ranked:
        short = next((key[len(p) :] for p in _SHORTENED if key.startswith(p)), key)
        parts.append(f"{short}={_value(value)}")
    return " ".join(parts)


def _value(v: Any) -> str:
    if isinstance(v, float):
        text = f"{v:.4g}"
    elif isinstance(v, list | tuple):
        text = ",".join(_value(x) for x in v)
    else:
        text = str(v)
    return _fit(text, _MAX_VALUE)


def _fit_name(lead: str, name: str, n: int) -> str:
    """Cut a span name from the left: the end of `switchyard.engine.decode` tells it apart."""
    room = n - len(lead)
    if len(name) <= room:
        return lead + name
    if room < 4:  # a very deep tree: cut at the right after all
        return _fit(lead + name, n)
    return lead + "…" + name[-(room - 1) :]


def _fit(text: str, n: int) -> str:
    return text if len(text) <= n else text[: max(n - 1, 0)] + "…"


def _clock(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


# --- listing -------------------------------------------------------------------------------


def list_traces(directory: Path, limit: int = 20) -> list[TraceSummary]:
    """The `limit` most recent traces in `directory` (newest first); [] when there are none."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    traces: dict[str, list[Span]] = {}
    for s in read_spans(directory):
        traces.setdefault(s.trace_id, []).append(s)
    out = []
    for trace_id, spans in traces.items():
        root = build_tree(spans)[0]
        start = min(s.start_ns for s in spans)
        end = max(s.end_ns for s in spans)
        out.append(
            TraceSummary(
                trace_id=trace_id,
                root=(_ORPHAN if root.orphan else "") + root.name,
                service=root.service,
                start_ns=start,
                duration_ms=max(end - start, 0) / 1e6,
                spans=len(spans),
            )
        )
    out.sort(key=lambda t: t.start_ns, reverse=True)
    return out[:limit]


def format_trace_list(traces: list[TraceSummary]) -> str:
    lines = [f"{'TRACE ID':<32}  {'START':<23}  {'DUR ms':>9}  {'SPANS':>5}  ROOT"]
    for t in traces:
        lines.append(
            f"{t.trace_id:<32}  {_clock(t.start_ns):<23}  {t.duration_ms:>9.1f}  {t.spans:>5}  "
            f"{t.root} ({t.service})"
        )
    return "\n".join(lines)
