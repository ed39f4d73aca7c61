"""The mesh benchmark's per-hop breakdown (`benchmarks/_hops.py`): each client turn matched to
its trace, its spans placed on the client's clock, hops measured between them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from _hops import HOPS, Mark, breakdown, per_turn_us

MS = 1_000_000


def _span(trace: str, name: str, start_ms: float, end_ms: float, **attrs: str) -> dict[str, object]:
    return {
        "trace_id": trace * 16,
        "span_id": f"{abs(hash((trace, name, start_ms))) % 16**16:016x}",
        "name": name,
        "service": "x",
        "start_ns": int(start_ms * MS),
        "end_ns": int(end_ms * MS),
        "attributes": attrs,
    }


def _turn(trace: str, t0: float) -> list[dict[str, object]]:
    """One turn's spans, `t0` ms being the client's call: every hop 1 ms apart but the engine's
    (10 ms) and the hold-back (3 ms)."""
    return [
        _span(trace, "ingress", t0 + 1, t0 + 30),
        _span(trace, "switchyard.router.pick", t0 + 2, t0 + 3),  # with the prompt policy
        _span(trace, "switchyard.engine.generate", t0 + 4, t0 + 40),
        _span(trace, "switchyard.engine.prefill", t0 + 4, t0 + 14),
        _span(trace, "switchyard.safety.scan", t0 + 15, t0 + 41),  # the response's
    ]


def test_each_turn_is_matched_to_its_own_trace_and_measured_hop_by_hop(tmp_path: Path) -> None:
    spans = _turn("a", 1000) + _turn("b", 2000) + _turn("c", 5)  # "c": a warm-up turn
    # A turn whose engine spans are missing is left out rather than guessed.
    spans += [_span("d", "ingress", 3001, 3030), _span("d", "switchyard.router.pick", 3002, 3003)]
    (tmp_path / "spans.jsonl").write_text("".join(json.dumps(s) + "\n" for s in spans))
    marks = [Mark(t * MS, (t + 18) * MS) for t in (1000, 2000, 3000)]

    out = breakdown(tmp_path, marks)

    assert out["turns"] == 2
    expected = [1.0, 1.0, 1.0, 1.0, 10.0, 1.0, 3.0]
    assert [out[row] for row, _, _ in HOPS] == pytest.approx(expected)
    # The mesh's share: the client's TTFT (18 ms) less the engine's queue + prefill (10 ms).
    assert out["mesh total (all but the engine's queue + prefill)"] == pytest.approx(8.0)


def test_cpu_per_turn_is_the_difference_over_the_turns() -> None:
    before = {"router": 1.0, "safety": 2.0}
    after = {"router": 1.5, "safety": 2.1}
    assert per_turn_us(before, after, 100) == pytest.approx({"router": 5000.0, "safety": 1000.0})
