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
