"""The snapshot cache: the one config every Envoy gets, and what each Envoy did with it.

Like go-control-plane's `pkg/cache/v3/simple.go`, reduced to what Switchyard needs: one snapshot
for all nodes (every Envoy of the mesh serves the same ingress), set only when consistent.
ADS streams register a watch and are woken on every `set_snapshot`; they report each response
sent and each ACK/NACK received, which `status()` returns per node id and type for operators.

    cache = SnapshotCache()
    cache.set_snapshot(build_snapshot(spec))     # raises InconsistentSnapshotError
    for node in cache.status(): ...              # ACK/NACK per node and type
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.router.xds import resources
from services.router.xds.snapshot import Snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TypeStatus:
    """Where one node stands with one resource type."""

    type_url: str
    # Version of the last response sent on the node's stream ("" before the first).
    version_sent: str
    # Last version the node accepted ("" until it ACKs).
    version_acked: str
    # Nonce of the last response sent.
    nonce: str
    # True when the node rejected the last response; it keeps serving `version_acked`.
    nacked: bool
    # Envoy's error_detail.message of the last NACK ("" when not nacked).
    error: str


@dataclass(frozen=True)
class NodeStatus:
    """One Envoy (node id) as the control plane sees it."""

    node_id: str
    # Open ADS streams from this node (0: disconnected, the status is from its last stream).
    streams: int
    # One entry per type the node subscribed to, in push order.
    types: tuple[TypeStatus, ...]

    def type(self, type_url: str) -> TypeStatus | None:
        """The status of one type, or None when the node never subscribed to it."""
        return next((t for t in self.types if t.type_url == type_url), None)


@dataclass(frozen=True)
class Hooks:
    """Optional observers of the ADS server (metrics, tests); each defaults to doing nothing.

    Like go-control-plane's CallbackFuncs. Called on the event loop; keep them quick. An
    exception in a hook is logged and does not break the stream.
    """

    # (stream_id) when an ADS stream opens (its node is not known yet).
    on_stream_open: Callable[[int], None] | None = None
    # (stream_id, node_id) when it closes, however it ends.
    on_stream_closed: Callable[[int, str], None] | None = None
    # (stream_id, DiscoveryRequest) for every request received, stale ones included.
    on_request: Callable[[int, Any], None] | None = None
    # (stream_id, DiscoveryResponse) for every response sent.
    on_response: Callable[[int, Any], None] | None = None


@dataclass
class _TypeRecord:
    version_sent: str = ""
    version_acked: str = ""
    nonce: str = ""
    nacked: bool = False
    error: str = ""


@dataclass
class _NodeRecord:
    streams: int = 0
    types: dict[str, _TypeRecord] = field(default_factory=dict)
    closed_seq: int = 0  # when its last stream closed (a counter), for pruning

    def type(self, type_url: str) -> _TypeRecord:
        return self.types.setdefault(type_url, _TypeRecord())


# Nodes kept after their last stream closed (an Envoy that restarted or went away), newest
# first; older ones are forgotten so that Envoys coming and going cannot grow the cache.
MAX_DISCONNECTED_NODES = 64


class SnapshotCache:
    """Holds the current snapshot, wakes ADS streams on change, and records per-node state.

    Thread-safe: `set_snapshot` and `status` may be called from any thread; watch callbacks run
    on the thread that sets the snapshot (the ADS server hops back onto its event loop).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._watches: dict[int, Callable[[], None]] = {}
        self._next_watch = 0
        self._nodes: dict[str, _NodeRecord] = {}
        self._closes = 0

    # -- the snapshot -------------------------------------------------------------------------

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """Serve `snapshot` to every node; refuses (InconsistentSnapshotError) an inconsistent
        one and keeps the previous snapshot."""
        snapshot.check_consistent()
        with self._lock:
            self._snapshot = snapshot
            watches = list(self._watches.values())
        for wake in watches:
            try:
                wake()
            except Exception:
                log.exception("xDS snapshot watcher failed")

    @property
    def snapshot(self) -> Snapshot | None:
        """The snapshot being served (None until the first `set_snapshot`)."""
        with self._lock:
            return self._snapshot

    def watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake()` after every `set_snapshot`; returns the function that cancels it."""
        with self._lock:
            key = self._next_watch
            self._next_watch += 1
            self._watches[key] = wake

        def cancel() -> None:
            with self._lock:
                self._watches.pop(key, None)

        return cancel

    # -- per-node bookkeeping, reported by the ADS server -------------------------------------

    def stream_opened(self, node_id: str) -> None:
        """A stream from `node_id` started (its first request named the node)."""
        with self._lock:
            self._nodes.setdefault(node_id, _NodeRecord()).streams += 1

    def stream_closed(self, node_id: str) -> None:
        """A stream from `node_id` ended; its status stays for operators (the most recent
        `MAX_DISCONNECTED_NODES` disconnected nodes)."""
        with self._lock:
            node = self._nodes.setdefault(node_id, _NodeRecord())
            node.streams = max(0, node.streams - 1)
            if node.streams == 0:
                self._closes += 1
                node.closed_seq = self._closes
                gone = [(n.closed_seq, k) for k, n in self._nodes.items() if n.streams == 0]
                if len(gone) > MAX_DISCONNECTED_NODES:
                    for _seq, key in sorted(gone)[: len(gone) - MAX_DISCONNECTED_NODES]:
                        del self._nodes[key]

    def record_sent(self, node_id: str, type_url: str, version: str, nonce: str) -> None:
        """A response of `version` with `nonce` went to the node."""
        with self._lock:
            rec = self._nodes.setdefault(node_id, _NodeRecord()).type(type_url)
            rec.version_sent, rec.nonce = version, nonce

    def record_ack(self, node_id: str, type_url: str, version: str) -> None:
        """The node accepted `version`; clears any earlier NACK of this type."""
        with self._lock:
            rec = self._nodes.setdefault(node_id, _NodeRecord()).type(type_url)
            rec.version_acked, rec.nacked, rec.error = version, False, ""

    def record_nack(self, node_id: str, type_url: str, version_kept: str, error: str) -> None:
        """The node rejected the last response and keeps serving `version_kept`."""
        with self._lock:
            rec = self._nodes.setdefault(node_id, _NodeRecord()).type(type_url)
            rec.version_acked, rec.nacked, rec.error = version_kept, True, error

    # -- operators ----------------------------------------------------------------------------

    def status(self) -> list[NodeStatus]:
        """Every node seen, by node id, with its per-type ACK/NACK state in push order."""
        with self._lock:
            return [self._node_status(node_id) for node_id in sorted(self._nodes)]

    def node_status(self, node_id: str) -> NodeStatus | None:
        """One node's status, or None when it never connected."""
        with self._lock:
            return self._node_status(node_id) if node_id in self._nodes else None

    def _node_status(self, node_id: str) -> NodeStatus:
        node = self._nodes[node_id]
        records = node.types
        order = [url for url in resources.PUSH_ORDER if url in records]
        order += sorted(url for url in records if url not in resources.PUSH_ORDER)
        return NodeStatus(
            node_id=node_id,
            streams=node.streams,
            types=tuple(
                TypeStatus(
                    type_url=url,
                    version_sent=records[url].version_sent,
                    version_acked=records[url].version_acked,
                    nonce=records[url].nonce,
                    nacked=records[url].nacked,
                    error=records[url].error,
                )
                for url in order
            ),
        )
