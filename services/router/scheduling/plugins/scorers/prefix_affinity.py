"""prefix-affinity-scorer: favours engines that already hold the start of the prompt in cache.

Reads: the prefix index (`KvIndex.match`): for each engine, how many leading blocks of the
prompt it holds, precisely (its KV events) or approximately (prompts routed there). Score = held
leading blocks / the prompt's full blocks, so 1.0 means only the last partial block and the
output need computing. Engines are grouped by KV block size and the prompt hashed once per
size. A prompt shorter than one block scores 0 everywhere.

Parameters: none.
"""

from __future__ import annotations

from typing import ClassVar

from services.common.config import StrictModel
from services.router.registry import EngineState
from services.router.scheduling.interfaces import (
    PREFIX_AFFINITY_SCORER,
    PluginContext,
    RoutingRequest,
)


class Params(StrictModel):
    pass


class PrefixAffinityScorer:
    type_name: ClassVar[str] = PREFIX_AFFINITY_SCORER
    decision_reason: ClassVar[str] = "prefix"

    def __init__(self, name: str, params: Params, ctx: PluginContext) -> None:
        self.name = name
        self._index = ctx.index

    def score(self, req: RoutingRequest, engines: list[EngineState]) -> dict[str, float]:
        if not engines:
            return {}
        size = engines[0].kv_block_size
        if all(e.kv_block_size == size for e in engines):
            return self._score(req, size, [e.engine_id for e in engines])
        groups: dict[int, list[str]] = {}
        for e in engines:
            groups.setdefault(e.kv_block_size, []).append(e.engine_id)
        out: dict[str, float] = {}
        for block_size, ids in groups.items():
            out.update(self._score(req, block_size, ids))
        return out

    def _score(self, req: RoutingRequest, block_size: int, ids: list[str]) -> dict[str, float]:
        hashes = req.block_hashes(block_size)
        if not hashes:
            return {}
        total = len(hashes)
        return {eid: held / total for eid, held in self._index.match(hashes, ids).items()}
