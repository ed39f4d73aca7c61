"""Which engine holds which prompt prefix: a precise view from KV events, an approximate fallback.

Blocks are named by OUR OWN chained hash, computed from token ids alone:

    own(block_0) = hash((ROOT_HASH, tuple(tokens_0)))
    own(block_i) = hash((own(block_i-1), tuple(tokens_i)))

A prompt cached under a cache salt (one per tenant, or per cache group) chains from
`salt_root(salt)` instead of ROOT_HASH, as vLLM folds the salt into the first block's hash:
one tenant's prompt never matches another's blocks.

Python's hash of a tuple of ints is deterministic across processes (PYTHONHASHSEED only salts
str/bytes) and C-fast, and the same function names a request's blocks and an engine's stored
blocks. vLLM's own block hashes depend on a per-process random seed, so they are never recomputed
here: each engine's view keeps a map vLLM hash → own hash, learnt from `BlockStored` events
(which carry the tokens), to chain a stored block onto its parent and to drop removed blocks.

Three sources answer one lookup:

- precise, for engines that forward KV events: exactly the blocks the engine reported as stored
  and not yet removed. A gap in a batch's `sequence` means events were lost: the engine's
  precise blocks are cleared and its view is *degraded* (precise plus approximate) until the engine
  reports `AllBlocksCleared` or re-registers. A stored event whose parent the view never saw
  cannot be chained; its blocks are skipped and counted (`stats.orphaned_blocks`).
- approximate, for engines without KV events (or a degraded view): the blocks of every prompt
  the router itself routed there, per engine an LRU bounded in entries and aged out by a TTL.
- in flight, for engines with a precise view: a routed prompt's blocks count for the engine
  until its events can have confirmed them (`pending_ttl`, the same LRU): the engine stores a
  prompt's blocks only once it has prefilled them, seconds later on a busy engine, and a turn
  sharing that prefix routed meanwhile must follow it rather than compute it a second time
  elsewhere. A block the engine reports removed stops counting at once.

All engines share two dicts own-hash → bitmask of engine slots (precise, approximate), so
`match()` walks a request's hashes once with one or two dict lookups per block. Engines with
different block sizes never collide: their blocks hash different token tuples; the caller
computes a request's hashes once per distinct block size (see `block_hashes`).

Not thread-safe: the router feeds and reads it from one event loop.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from switchyard.v1 import engine_pb2

log = logging.getLogger(__name__)

# The parent of a prompt's first block.
ROOT_HASH = 0
# Candidate sets whose slot mask match() remembers (cleared when engines come or go).
MASK_CACHE_SIZE = 1024


def chain_hashes(token_ids: Sequence[int], block_size: int, parent: int = ROOT_HASH) -> list[int]:
    """Own chained hashes of the full blocks of `token_ids`, chained from `parent`."""
    out: list[int] = []
    if block_size <= 0:
        return out
    h = parent
    it = iter(token_ids)
    # zip(*[it] * n) yields full n-tuples only: a trailing partial block is dropped.
    for chunk in zip(*([it] * block_size), strict=False):
        h = hash((h, chunk))
        out.append(h)
    return out


def salt_root(salt: str) -> int:
    """The parent of the first block of a prompt cached under `salt` (vLLM's cache_salt enters
    the first block's hash: the same tokens under another salt are other blocks)."""
    if not salt:
        return ROOT_HASH
    # An int from the salt (str hashes vary per process; tuples of ints do not).
    return hash((ROOT_HASH, int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "big")))


def block_hashes(token_ids: Sequence[int], block_size: int, salt: str = "") -> list[int]:
    """Own hashes of a prompt's full blocks (a partial last block is never cached by vLLM)."""
    return chain_hashes(token_ids, block_size, salt_root(salt))


@dataclass(frozen=True)
class KvIndexConfig:
    """Bounds of the index; every bound is per engine, so memory is O(engines x bound)."""

    # Precise blocks kept per engine: kv_num_blocks x precise_slack (lost removals cannot grow
    # the view past what the engine could hold); precise_max_blocks when kv_num_blocks is 0.
    precise_slack: float = 1.25
    precise_max_blocks: int = 200_000
    # vLLM hash → own hash entries kept per engine for chaining, as a multiple of the precise
    # bound (removed blocks stay known so a later child can still chain onto them).
    chain_factor: float = 2.0
    # Approximate blocks (routed prompts) kept per engine, LRU; also capped by the engine's
    # kv_num_blocks x precise_slack when known.
    approx_max_blocks: int = 50_000
    # Approximate entries older than this (seconds since the block was last routed) are dropped.
    approx_ttl: float = 600.0
    # For an engine with a precise view, routed blocks count this long (its KV events confirm
    # them once it has prefilled the prompt; a queued turn may wait that long first).
    pending_ttl: float = 30.0


@dataclass
class KvIndexStats:
    """Counters for metrics and status (cumulative)."""

    batches: int = 0  # KV event batches applied
    gaps: int = 0  # sequence gaps seen (each clears one engine's precise view)
    stored_blocks: int = 0  # blocks indexed from BlockStored
    orphaned_blocks: int = 0  # stored blocks skipped: parent never seen
    malformed_events: int = 0  # BlockStored whose tokens do not fill its blocks
    precise_evicted: int = 0  # precise blocks dropped by the per-engine bound
    approx_evicted: int = 0  # approximate entries dropped by the LRU bound
    approx_expired: int = 0  # approximate entries dropped by the TTL


@dataclass(eq=False)
class _View:
    """One engine's part of the index."""

    engine_id: str
    slot: int  # bit position in the shared masks
    bit: int  # 1 << slot
    kv_events: bool  # the engine forwards KV events
    degraded: bool = False  # events were lost: use precise plus approximate
    last_sequence: int | None = None  # of the last applied batch
    precise_max: int = 0
    chain_max: int = 0
    approx_max: int = 0
    # vLLM hash → own hash for blocks the engine holds now (insertion order: oldest first).
    present: dict[bytes, int] = field(default_factory=dict)
    # vLLM hash → own hash for every block seen (held or not), to chain children onto.
    chain: dict[bytes, int] = field(default_factory=dict)
    # Own hashes held under more than one vLLM hash (cache salt, LoRA): extra references.
    refs: dict[int, int] = field(default_factory=dict)
    # Approximate (in flight, for a precise view): own hash → last time routed, least
    # recently routed first.
    approx: OrderedDict[int, float] = field(default_factory=OrderedDict)

    @property
    def uses_approx(self) -> bool:
        return not self.kv_events or self.degraded

    def routed_ttl(self, cfg: KvIndexConfig) -> float:
        """How long a routed block counts: until events confirm it, on a precise view."""
        return cfg.approx_ttl if self.uses_approx else cfg.pending_ttl


class KvIndex:
    """Prefix-cache locality of every engine: feed it events and routed prompts, ask `match`."""

    def __init__(
        self, config: KvIndexConfig | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or KvIndexConfig()
        self.stats = KvIndexStats()
        self._clock = clock
        self._views: dict[str, _View] = {}
        self._free_slots: list[int] = []
        self._slot_ids: list[str] = []  # slot → engine_id ("" when free)
        self._masks: dict[tuple[str, ...], int] = {}  # engine ids → slot mask (match cache)
        self._groups: dict[int, tuple[str, ...]] = {}  # slot mask → engine ids
        self._names: dict[int, tuple[str, ...]] = {}  # (byte index, byte) → engine ids
        self._next_slot = 0
        self._precise: dict[int, int] = {}  # own hash → mask of engines holding it (precise)
        self._approx: dict[int, int] = {}  # own hash → mask of engines it was routed to
        self._next_expiry = 0.0

    # -- membership ------------------------------------------------------------------------

    def add_engine(self, engine_id: str, *, kv_events: bool, kv_num_blocks: int = 0) -> None:
        """Start (or restart, empty) the view of an engine."""
        self.remove_engine(engine_id)
        if self._free_slots:
            slot = self._free_slots.pop()
        else:
            slot = self._next_slot
            self._next_slot += 1
            self._slot_ids.append("")
        self._slot_ids[slot] = engine_id
        self._masks.clear()
        self._names.clear()
        self._groups.clear()
        cfg = self.config
        cap = int(kv_num_blocks * cfg.precise_slack) if kv_num_blocks > 0 else 0
        precise_max = cap or cfg.precise_max_blocks
        v = _View(
            engine_id=engine_id,
            slot=slot,
            bit=1 << slot,
            kv_events=kv_events,
            precise_max=precise_max,
            chain_max=max(1, int(precise_max * cfg.chain_factor)),
            approx_max=min(cfg.approx_max_blocks, cap) if cap else cfg.approx_max_blocks,
        )
        self._views[engine_id] = v

    def remove_engine(self, engine_id: str) -> None:
        """Forget an engine and everything attributed to it; its slot is reused."""
        v = self._views.pop(engine_id, None)
        if v is None:
            return
        self._clear_precise(v)
        self._clear_approx(v)
        self._slot_ids[v.slot] = ""
        self._masks.clear()
        self._names.clear()
        self._groups.clear()
        self._free_slots.append(v.slot)

    def engines(self) -> list[str]:
        return list(self._views)

    def is_precise(self, engine_id: str) -> bool:
        """True when the engine's answers come from a complete stream of its KV events."""
        v = self._views.get(engine_id)
        return v is not None and v.kv_events and not v.degraded

    def indexed_blocks(self, engine_id: str) -> int:
        """Blocks the index attributes to the engine (what `match` can find there)."""
        v = self._views.get(engine_id)
        if v is None:
            return 0
        return len(v.present) + len(v.approx)

    # -- precise: KV events ----------------------------------------------------------------

    def apply(self, engine_id: str, batch: engine_pb2.KvCacheEvents) -> None:
        """Apply one batch of an engine's KV events, in order; a sequence gap degrades the view."""
        v = self._views.get(engine_id)
        if v is None:
            return
        self.stats.batches += 1
        seq = batch.sequence
        if v.last_sequence is not None and seq != v.last_sequence + 1:
            self.stats.gaps += 1
            log.warning(
                "KV events of %s: expected batch %d, got %d; precise view cleared",
                engine_id,
                v.last_sequence + 1,
                seq,
            )
            self._clear_precise(v)
            v.degraded = True
        v.last_sequence = seq
        for ev in batch.events:
            kind = ev.WhichOneof("event")
            if kind == "stored":
                self._stored(v, ev.stored)
            elif kind == "removed":
                self._removed(v, ev.removed.block_hashes)
            elif kind == "cleared":
                self._clear_precise(v)
                self._clear_approx(v)  # nothing routed before it is held either
                v.degraded = False  # an empty cache is a complete view again

    def _stored(self, v: _View, ev: engine_pb2.BlockStored) -> None:
        hashes = ev.block_hashes
        bs = ev.block_size
        tokens = list(ev.token_ids)
        n = len(hashes)
        if bs <= 0 or len(tokens) != n * bs:
            self.stats.malformed_events += 1
            n = min(n, len(tokens) // bs) if bs > 0 else 0
        if n == 0:
            return
        if ev.parent_block_hash:
            parent = v.chain.get(ev.parent_block_hash)
            if parent is None:
                self.stats.orphaned_blocks += n
                return
        else:
            parent = salt_root(ev.cache_salt)
        owns = chain_hashes(tokens[: n * bs], bs, parent)
        present, chain, refs, precise, bit = v.present, v.chain, v.refs, self._precise, v.bit
        for vh, own in zip(hashes, owns, strict=False):
            chain[vh] = own
            if vh in present:
                continue
            present[vh] = own
            m = precise.get(own, 0)
            if m & bit:
                refs[own] = refs.get(own, 1) + 1
            else:
                precise[own] = m | bit
        self.stats.stored_blocks += n
        if len(present) > v.precise_max:
            self._evict_precise(v, len(present) - v.precise_max)
        if len(chain) > v.chain_max:
            # Forget blocks no longer held (their children are unlikely to come now).
            v.chain = dict(present)

    def _removed(self, v: _View, hashes: Iterable[bytes]) -> None:
        present, routed = v.present, v.approx
        for vh in hashes:
            own = present.pop(vh, None)
            if own is not None:
                self._drop_precise(v, own)
                if routed.pop(own, None) is not None:  # (routed again since it was stored)
                    self._drop_approx(own, v.bit)

    def _drop_precise(self, v: _View, own: int) -> None:
        c = v.refs.get(own)
        if c is not None:
            if c <= 2:
                del v.refs[own]
            else:
                v.refs[own] = c - 1
            return
        m = self._precise.get(own, 0) & ~v.bit
        if m:
            self._precise[own] = m
        else:
            self._precise.pop(own, None)

    def _evict_precise(self, v: _View, count: int) -> None:
        victims = []
        for vh in v.present:
            victims.append(vh)
            if len(victims) >= count:
                break
        self._removed(v, victims)
        self.stats.precise_evicted += len(victims)

    def _clear_precise(self, v: _View) -> None:
        precise, keep = self._precise, ~v.bit
        for own in v.present.values():
            m = precise.get(own, 0) & keep
            if m:
                precise[own] = m
            else:
                precise.pop(own, None)
        v.present = {}
        v.refs = {}

    # -- approximate: routed prompts -------------------------------------------------------

    def record_routed(self, engine_id: str, hashes: Sequence[int]) -> None:
        """Remember that a prompt with these own block hashes was routed to the engine: for
        `approx_ttl` on an engine without a precise view, for `pending_ttl` (until its events
        confirm the blocks) on one with it."""
        v = self._views.get(engine_id)
        if v is None or not hashes:
            return
        bit = v.bit
        if not v.uses_approx:  # only what its events have not confirmed yet
            held = self._precise.get
            hashes = [h for h in hashes if not held(h, 0) & bit]
            if not hashes:
                return
        now = self._clock()
        lru, approx = v.approx, self._approx
        move = lru.move_to_end
        for h in hashes:
            if h in lru:
                move(h)
            else:
                approx[h] = approx.get(h, 0) | bit
            lru[h] = now
        over = len(lru) - v.approx_max
        if over > 0:
            for _ in range(over):
                h, _t = lru.popitem(last=False)
                self._drop_approx(h, bit)
            self.stats.approx_evicted += over
        if now >= self._next_expiry:
            self.expire(now)

    def _drop_approx(self, h: int, bit: int) -> None:
        m = self._approx.get(h, 0) & ~bit
        if m:
            self._approx[h] = m
        else:
            self._approx.pop(h, None)

    def _clear_approx(self, v: _View) -> None:
        for h in v.approx:
            self._drop_approx(h, v.bit)
        v.approx = OrderedDict()

    def expire(self, now: float | None = None) -> int:
        """Drop routed entries older than their view's TTL; returns how many."""
        now = self._clock() if now is None else now
        cfg = self.config
        dropped = 0
        for v in self._views.values():
            cutoff = now - v.routed_ttl(cfg)
            lru = v.approx
            while lru:
                h, t = next(iter(lru.items()))
                if t > cutoff:
                    break
                del lru[h]
                self._drop_approx(h, v.bit)
                dropped += 1
        self.stats.approx_expired += dropped
        # Entries may outlive their TTL by at most an eighth of the shorter one.
        self._next_expiry = now + min(cfg.approx_ttl, cfg.pending_ttl) / 8
        return dropped

    # -- lookup ----------------------------------------------------------------------------

    def _mask_of(self, engine_ids: Iterable[str]) -> int:
        """The slot mask of a set of engines; cached, as a pool's candidates rarely change."""
        key = engine_ids if isinstance(engine_ids, tuple) else tuple(engine_ids)
        mask = self._masks.get(key)
        if mask is None:
            mask = 0
            views = self._views
            for eid in key:
                v = views.get(eid)
                if v is not None:
                    mask |= v.bit
            if len(self._masks) >= MASK_CACHE_SIZE:
                self._masks.clear()
            self._masks[key] = mask
        return mask

    def match(self, hashes: Sequence[int], engine_ids: Iterable[str]) -> dict[str, int]:
        """How many leading blocks of `hashes` each engine holds (longest prefix, stopping at
        the first miss). Engines holding none (or unknown to the index) are left out: 0."""
        alive = self._mask_of(engine_ids)
        result: dict[str, int] = {}
        if not alive or not hashes:
            return result
        if self._approx and self._clock() >= self._next_expiry:
            self.expire()
        precise_get = self._precise.get
        names_of = self._names_of
        n = 0
        if self._approx:
            approx_get = self._approx.get
            for h in hashes:
                m = (precise_get(h, 0) | approx_get(h, 0)) & alive
                if m != alive:
                    if n:
                        result.update(dict.fromkeys(names_of(alive & ~m), n))
                    alive = m
                    if not alive:
                        return result
                n += 1
        else:
            for h in hashes:
                m = precise_get(h, 0) & alive
                if m != alive:
                    if n:
                        result.update(dict.fromkeys(names_of(alive & ~m), n))
                    alive = m
                    if not alive:
                        return result
                n += 1
        result.update(dict.fromkeys(names_of(alive), n))
        return result

    def _names_of(self, mask: int) -> tuple[str, ...]:
        """Engine ids of the slots in `mask`. Cached per mask, and per byte of a mask, as the
        same groups of engines recur (e.g. every engine holding one system prompt)."""
        got = self._groups.get(mask)
        if got is not None:
            return got
        out: list[str] = []
        chunk = 0
        m = mask
        while m:
            byte = m & 0xFF
            if byte:
                key = (chunk << 8) | byte
                names = self._names.get(key)
                if names is None:
                    names = self._names[key] = tuple(
                        self._slot_ids[chunk * 8 + i] for i in range(8) if byte >> i & 1
                    )
                out.extend(names)
            m >>= 8
            chunk += 1
        if len(self._groups) >= MASK_CACHE_SIZE:
            self._groups.clear()
        got = self._groups[mask] = tuple(out)
        return got
