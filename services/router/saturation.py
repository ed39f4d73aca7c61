"""How full a pool is: one function of each engine's capacity, its turns and its KV cache.

An engine serves `capacity` turns at once before it counts as full (per accelerator: an H100
engine absorbs far more than an L4 one; tune to the engines' max_num_seqs and SLO), or fewer if
its KV cache is above `kv_high`. A pool's free slots are the sum over its routable engines of
what each has left (negative for one over its capacity); it is saturated when none is left.
Flow control (fair share) holds turns in the router while a pool is saturated; degradation and
autoscaling read the same numbers.

    saturation:
      capacity: {h100: 64, l4: 16, cpu: 16}
      kv_high: 0.9
"""

from __future__ import annotations

from collections.abc import Iterable

import pydantic

from services.common.config import StrictModel
from services.router.registry import EngineState


def _default_capacity() -> dict[str, int]:
    return {"h200": 96, "h100": 64, "a100": 48, "l40s": 32, "l4": 16, "cpu": 16}


class SaturationSection(StrictModel):
    # Turns an engine serves at once before it counts as full, by its accelerator label.
    capacity: dict[str, int] = pydantic.Field(default_factory=_default_capacity)
    default_capacity: int = pydantic.Field(8, ge=1)  # accelerators not listed
    # KV-cache usage above which an engine is full whatever its turn count.
    kv_high: float = pydantic.Field(0.9, gt=0, le=1)

    @pydantic.field_validator("capacity")
    @classmethod
    def _positive(cls, v: dict[str, int]) -> dict[str, int]:
        for name, cap in v.items():
            if cap < 1:
                raise ValueError(f"capacity.{name} must be at least 1, got {cap}")
        return v

    def capacity_of(self, e: EngineState) -> int:
        return self.capacity.get(e.accelerator, self.default_capacity)

    def free_slots(self, e: EngineState) -> int:
        """Turns the engine can take before it is full (none when its KV cache is); negative
        when it holds more than its capacity (routing put more there, e.g. for its cache)."""
        free = self.capacity_of(e) - e.queue_depth
        return min(0, free) if e.kv_usage >= self.kv_high else free

    def pressure(self, e: EngineState) -> float:
        """The engine's load against its capacity: 1.0 is full (turns or KV cache)."""
        return max(e.queue_depth / self.capacity_of(e), e.kv_usage / self.kv_high)

    def pool_free_slots(self, engines: Iterable[EngineState]) -> int:
        """The pool's room as a whole: its engines' capacity less all their turns (an engine
        over its capacity uses up another's room: the pool is saturated when the total is)."""
        return sum(self.free_slots(e) for e in engines)

    def pool_capacity(self, engines: Iterable[EngineState]) -> int:
        return sum(self.capacity_of(e) for e in engines)
