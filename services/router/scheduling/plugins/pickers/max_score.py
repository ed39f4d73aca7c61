"""max-score-picker: ranks engines by weighted total score, best first.

Reads: the weighted totals from the scorers, and `pending` of each engine for ties. Totals equal
to 1e-9 tie; ties go to the engine with fewer turns routed since its last load report, then at
random (so equal engines share a burst instead of the first in the list taking it all).

Parameters:
  seed (int, optional): seeds the tie-break randomness (tests, reproducible benchmarks).
"""

from __future__ import annotations

import random
from typing import ClassVar

from services.common.config import StrictModel
from services.router.registry import EngineState
from services.router.scheduling.interfaces import MAX_SCORE_PICKER, PluginContext, RoutingRequest

# Totals this close are equal (float sums of the same weights).
TIE_TOLERANCE = 1e-9


class Params(StrictModel):
    seed: int | None = None


class MaxScorePicker:
    type_name: ClassVar[str] = MAX_SCORE_PICKER

    def __init__(self, name: str, params: Params, ctx: PluginContext) -> None:
        self.name = name
        self._random = random.Random(params.seed)

    def pick(
        self, req: RoutingRequest, scored: list[tuple[EngineState, float]], limit: int
    ) -> list[EngineState]:
        n = len(scored)
        if n <= 1:
            return [e for e, _ in scored]
        totals = [t for _, t in scored]
        order = sorted(range(n), key=totals.__getitem__, reverse=True)
        out: list[EngineState] = []
        i = 0
        while i < n and len(out) < limit:
            floor = totals[order[i]] - TIE_TOLERANCE
            j = i + 1
            while j < n and totals[order[j]] >= floor:
                j += 1
            if j - i == 1:
                out.append(scored[order[i]][0])
            else:
                self._break_tie([scored[k][0] for k in order[i:j]], limit - len(out), out)
            i = j
        return out

    def _break_tie(self, group: list[EngineState], need: int, out: list[EngineState]) -> None:
        """Append the `need` best of equally scored engines: fewest pending, then at random."""
        while group and need > 0:
            low = min(e.pending for e in group)
            best = [e for e in group if e.pending == low]
            if len(best) > need:
                best = self._random.sample(best, need)
            elif len(best) > 1:
                self._random.shuffle(best)
            out.extend(best)
            need -= len(best)
            group = [e for e in group if e.pending != low]
