"""Where a mesh turn's time and CPU go: per-hop latency from its spans, CPU per turn per process.

Latency: every mesh turn's spans (Envoy's ingress and ext_proc calls, the router's pick with the
prompt policy, the safety filter's response scan, the engine's generate and prefill) placed on
the client's clock (the client records when it called and when the first text arrived; all
processes share one machine's wall clock), then the p50 of each hop across turns. The engine's
own queue + prefill is shown apart: it is the model's time, not the mesh's.

CPU: user + system seconds of each process (the engine's front process and its vLLM engine core
apart) over a load phase, divided by the turns served in it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# (row, from point, to point); points are ms after the client's call.
HOPS = (
    ("client → Envoy (ingress span starts)", "call", "ingress"),
    ("Envoy → router: stream + headers round trip + body", "ingress", "router_body"),
    ("router: decode, prompt policy, tokenize, quota, pick", "router_body", "router_answer"),
    ("Envoy → engine (the call starts there)", "router_answer", "engine_start"),
    ("engine: queue + prefill to first text (the model's)", "engine_start", "engine_text"),
    ("engine → Envoy → safety (first response chunk)", "engine_text", "safety_chunk"),
    ("safety hold-back + Envoy → client", "safety_chunk", "client_text"),
)


@dataclass(frozen=True)
class Mark:
    """One mesh turn as its client saw it (wall clock, ns)."""

    call_ns: int
    first_text_ns: int


def _points(spans: list[Any], mark: Mark) -> dict[str, float] | None:
    """The turn's points in ms after the client's call; None when a span is missing."""

    def named(name: str) -> list[Any]:
        """The turn's spans of that name, earliest first."""
        return sorted((s for s in spans if s.name == name), key=lambda s: s.start_ns)

    ingress = named("ingress")
    router = named("switchyard.router.pick")
    scans = named("switchyard.safety.scan")
    engine = named("switchyard.engine.generate")
    prefill = named("switchyard.engine.prefill")
    if not (ingress and router and scans and engine and prefill):
        return None

    def ms(ns: int) -> float:
        return (ns - mark.call_ns) / 1e6

    return {
        "call": 0.0,
        "ingress": ms(ingress[0].start_ns),
        "router_body": ms(router[0].start_ns),
        "router_answer": ms(router[0].end_ns),
        "engine_start": ms(engine[0].start_ns),
        "engine_text": ms(prefill[0].end_ns),
        "safety_chunk": ms(scans[0].start_ns),
        "client_text": ms(mark.first_text_ns),
    }


def breakdown(traces: Path, marks: list[Mark]) -> dict[str, Any]:
    """p50 ms per hop over the turns in `marks` (each matched to the trace whose ingress starts
    first after its call), the mesh's total beside the engine's time, and how many turns had
    every span."""
    from services.mesh.trace import read_spans

    by_trace: dict[str, list[Any]] = defaultdict(list)
    for span in read_spans(traces):
        by_trace[span.trace_id].append(span)
    starts = sorted(
        (min(s.start_ns for s in ss if s.name == "ingress"), tid)
        for tid, ss in by_trace.items()
        if any(s.name == "ingress" for s in ss)
    )
    hops: dict[str, list[float]] = defaultdict(list)
    for mark in marks:
        # The first ingress after the call (within 50 ms: the client's own send comes first).
        match = next((tid for t, tid in starts if 0 <= t - mark.call_ns < 50_000_000), None)
        points = _points(by_trace[match], mark) if match else None
        if points is None:
            continue
        for row, a, b in HOPS:
            hops[row].append(points[b] - points[a])
        engine = points["engine_text"] - points["engine_start"]
        hops["mesh total (all but the engine's queue + prefill)"].append(
            points["client_text"] - engine
        )
    out: dict[str, Any] = {row: statistics.median(v) for row, v in hops.items()}
    out["turns"] = min((len(v) for v in hops.values()), default=0)
    return out


class CpuMeter:
    """User + system CPU seconds of named processes; `engine core` is the engine's children
    (vLLM's engine core process), `engine front` the engine's own process (gRPC, AsyncLLM)."""

    def __init__(self, pids: dict[str, int], engine: str = "engine front") -> None:
        import psutil

        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._engine = engine

    def _cpu(self, proc: Any) -> float:
        t = proc.cpu_times()
        return float(t.user + t.system)

    def read(self) -> dict[str, float]:
        out = {name: self._cpu(p) for name, p in self._procs.items()}
        if self._engine in self._procs:
            out["engine core"] = sum(
                self._cpu(c) for c in self._procs[self._engine].children(recursive=True)
            )
        return out


def per_turn_us(before: dict[str, float], after: dict[str, float], turns: int) -> dict[str, float]:
    """CPU-µs per turn of each process between two readings."""
    return {k: (after[k] - before[k]) / max(1, turns) * 1e6 for k in before}
