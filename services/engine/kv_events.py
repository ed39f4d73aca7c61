"""Forward vLLM's KV-cache events (block stored / removed / all cleared) as protobuf batches.

vLLM's engine core publishes `KVEventBatch`es on a ZMQ PUB socket (msgpack, multipart
`topic, seq, payload`). The engine service binds that socket to a private ipc:// path, subscribes
from its own event loop, and hands each batch, converted, to `on_batch` (LoadTracker.publish_kv).
Only the device-resident tier (medium GPU, which is also what vLLM calls the CPU backend's cache)
is forwarded: that is what decides prefix-cache hits.
"""

from __future__ import annotations

import logging
import os
import tempfile
from array import array
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec
import zmq
import zmq.asyncio
from google.protobuf.timestamp_pb2 import Timestamp

from switchyard.v1 import engine_pb2

log = logging.getLogger(__name__)

TOPIC = "kv"


def ipc_endpoint(engine_id: str) -> str:
    """A private ipc:// endpoint for one engine process."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in engine_id)
    return f"ipc://{tempfile.gettempdir()}/switchyard-kv-{safe}-{os.getpid()}.sock"


def block_hash_bytes(h: bytes | int) -> bytes:
    """vLLM's external block hash is bytes (sha256 algos) or an int (builtin hash)."""
    if isinstance(h, bytes):
        return h
    return h.to_bytes(8, "big", signed=h < 0)


def _cache_salt(ev: Any) -> str:
    """The cache salt of a stored run's first block: vLLM publishes each block's extra keys
    untagged, in order: the LoRA name (when set), (mm id, offset) pairs, the salt, digests."""
    keys = (getattr(ev, "extra_keys", None) or [None])[0]
    strings = [k for k in keys or () if isinstance(k, str)]
    if getattr(ev, "lora_name", None) and strings:
        strings = strings[1:]
    return strings[0] if strings else ""


def convert_event(ev: Any) -> engine_pb2.KvCacheEvent | None:
    """One vLLM KV event → protobuf, or None for tiers other than the device cache."""
    from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored

    medium = getattr(ev, "medium", None)
    if medium not in (None, "GPU"):
        return None
    if isinstance(ev, BlockStored):
        return engine_pb2.KvCacheEvent(
            stored=engine_pb2.BlockStored(
                block_hashes=[block_hash_bytes(h) for h in ev.block_hashes],
                parent_block_hash=b""
                if ev.parent_block_hash is None
                else block_hash_bytes(ev.parent_block_hash),
                token_ids=ev.token_ids,
                block_size=ev.block_size,
                cache_salt=_cache_salt(ev) if ev.parent_block_hash is None else "",
            )
        )
    if isinstance(ev, BlockRemoved):
        return engine_pb2.KvCacheEvent(
            removed=engine_pb2.BlockRemoved(
                block_hashes=[block_hash_bytes(h) for h in ev.block_hashes]
            )
        )
    if isinstance(ev, AllBlocksCleared):
        return engine_pb2.KvCacheEvent(cleared=engine_pb2.AllBlocksCleared())
    return None


class KvEventForwarder:
    """Subscribes to the engine core's publisher and converts batches for `on_batch`."""

    def __init__(self, endpoint: str, on_batch: Callable[[engine_pb2.KvCacheEvents], None]) -> None:
        self.endpoint = endpoint
        self._on_batch = on_batch
        self._ctx = zmq.asyncio.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        self._sock.setsockopt_string(zmq.SUBSCRIBE, TOPIC)
        self._sock.connect(endpoint)
        self.batches = 0  # batches forwarded
        self.gaps = 0  # times the publisher's sequence skipped (batches lost upstream)

    async def run(self) -> None:
        from vllm.distributed.kv_events import KVEventBatch

        decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        expected: int | None = None
        try:
            while True:
                _topic, seq_bytes, payload = await self._sock.recv_multipart()
                seq = int.from_bytes(seq_bytes, "big")
                if expected is not None and seq != expected:
                    # Make the loss visible downstream as a gap in our own sequence.
                    self.gaps += 1
                    self.batches += 1
                    log.warning("KV events: expected batch %d, got %d", expected, seq)
                expected = seq + 1
                batch = decoder.decode(payload)
                events = [e for e in (convert_event(ev) for ev in batch.events) if e is not None]
                if not events:
                    continue
                ts = Timestamp()
                ts.FromNanoseconds(int(batch.ts * 1e9))
                self.batches += 1
                self._on_batch(
                    engine_pb2.KvCacheEvents(time=ts, sequence=self.batches, events=events)
                )
        finally:
            self._sock.close(linger=0)


class KvBlockLedger:
    """The blocks this engine holds in its prefix cache, as its own KV events describe them.

    Fed every forwarded batch; `replay()` turns what is held into one batch — all cleared,
    then every held block stored, parents before children — that a new watcher (a router that
    just restarted, or a registration stream that reconnects) receives first, so its prefix
    index is whole at once instead of cold. Bounded like the router's view: at most
    `max_blocks` blocks (the engine's KV capacity with some slack for lost removals), oldest
    first out. Token ids are kept packed (4 bytes each).
    """

    def __init__(self, max_blocks: int = 200_000) -> None:
        self.max_blocks = max(1, max_blocks)
        # vLLM block hash → (parent hash or b"", block size, tokens, cache salt of a first
        # block), in store order.
        self._blocks: OrderedDict[bytes, tuple[bytes, int, array[int], str]] = OrderedDict()
        self.last_sequence = 0  # of the last batch applied

    def __len__(self) -> int:
        return len(self._blocks)

    def apply(self, batch: engine_pb2.KvCacheEvents) -> None:
        self.last_sequence = batch.sequence
        blocks = self._blocks
        for ev in batch.events:
            kind = ev.WhichOneof("event")
            if kind == "stored":
                st = ev.stored
                bs = st.block_size
                parent = st.parent_block_hash
                tokens = st.token_ids
                salt = st.cache_salt
                for i, h in enumerate(st.block_hashes):
                    chunk = tokens[i * bs : (i + 1) * bs]
                    if bs <= 0 or len(chunk) != bs:
                        break
                    blocks[h] = (parent, bs, array("I", chunk), "" if parent else salt)
                    blocks.move_to_end(h)
                    parent = h
            elif kind == "removed":
                for h in ev.removed.block_hashes:
                    blocks.pop(h, None)
            elif kind == "cleared":
                blocks.clear()
        while len(blocks) > self.max_blocks:
            blocks.popitem(last=False)

    def replay(self) -> engine_pb2.KvCacheEvents:
        """One batch that rebuilds a receiver's view: cleared, then every held block whose
        chain back to a prompt's start is held too, parents first. Its sequence is the last
        applied batch's, so the next live batch follows it without a gap."""
        events = [engine_pb2.KvCacheEvent(cleared=engine_pb2.AllBlocksCleared())]
        emitted: set[bytes] = set()
        pending = list(self._blocks.items())
        while pending:
            waiting = []
            for h, (parent, bs, tokens, salt) in pending:
                if parent and parent not in emitted:
                    waiting.append((h, (parent, bs, tokens, salt)))
                    continue
                events.append(
                    engine_pb2.KvCacheEvent(
                        stored=engine_pb2.BlockStored(
                            block_hashes=[h],
                            parent_block_hash=parent,
                            token_ids=tokens.tolist(),
                            block_size=bs,
                            cache_salt=salt,
                        )
                    )
                )
                emitted.add(h)
            if len(waiting) == len(pending):  # the rest chain onto blocks no longer held
                break
            pending = waiting
        ts = Timestamp()
        ts.GetCurrentTime()
        return engine_pb2.KvCacheEvents(time=ts, sequence=self.last_sequence, events=events)
