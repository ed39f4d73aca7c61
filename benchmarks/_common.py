"""Helpers shared by the benchmarks: percentiles, prompts, progress and result tables."""

from __future__ import annotations

import json
import random
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WORDS = (
    "river signal engine morning copper lantern harbor garden violet thunder quiet market "
    "station window silver meadow orbit canyon ember falcon glacier meridian"
).split()


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation, NaNs ignored; NaN for no values."""
    values = [v for v in values if v == v]
    if not values:
        return float("nan")
    if len(values) == 1:
        return float(values[0])
    return float(
        statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, int(q) - 1))]
        if q not in (0, 100)
        else (min(values) if q == 0 else max(values))
    )


def prompts(n: int, words: int, seed: int) -> list[str]:
    """`n` distinct prompts of `words` words (distinct first words, so no shared prefix)."""
    rnd = random.Random(seed)
    return [f"{i} " + " ".join(rnd.choice(WORDS) for _ in range(words)) for i in range(n)]


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def write_json(path: str | None, data: Any) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2))
        say(f"results written to {path}")
