"""The ADS server: state-of-the-world xDS over one gRPC stream per Envoy, on grpc.aio.

Like go-control-plane's `pkg/server/sotw/v3/ads.go`. Per stream and type it remembers what was
sent (version, nonce, the names it was computed for) and answers a type only when that changed:

- a request whose `response_nonce` is not the last nonce sent for its type is stale: ignored;
- a request answering the last nonce is an ACK of `version_info`, or a NACK when it carries
  `error_detail`: the error is recorded, Envoy keeps its last good config, and the rejected
  version is not sent again (no resend loop) until the snapshot changes;
- a new snapshot, a first subscription or a changed `resource_names` gets a response, with a
  fresh nonce; several types are sent in the order cluster → endpoint → listener → route;
- LDS/CDS with no names mean every resource; EDS/RDS send only the names asked for ("*" asks
  for all).

    add_to_server(grpc_server, cache)            # beside the router's other services
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

# xds-protos ships no type stubs: its modules are untyped (Any) to mypy.
from envoy.service.discovery.v3 import (  # type: ignore[import-untyped,unused-ignore]
    ads_pb2_grpc,
    discovery_pb2,
)
from google.protobuf import any_pb2
from prometheus_client import Counter

from services.router.xds import resources
from services.router.xds.cache import Hooks, SnapshotCache

log = logging.getLogger(__name__)

PUSHES = Counter(
    "switchyard_router_xds_pushes_total",
    "xDS responses sent to Envoy, by resource type.",
    ["type"],
)
NACKS = Counter(
    "switchyard_router_xds_nacks_total",
    "xDS responses Envoy rejected (NACK), by resource type.",
    ["type"],
)

_CHANGED = object()  # queued when the cache gets a new snapshot
_CLOSED = object()  # queued when the client half-closes or the read fails


@dataclass
class _Subscription:
    """One type on one stream."""

    # Names asked for; None means every resource of the type.
    names: frozenset[str] | None = None
    # What the last response held: version, the names it was filtered by, its nonce.
    sent_version: str | None = None
    sent_names: frozenset[str] | None = None
    nonce: str = ""


@dataclass
class _Stream:
    stream_id: int
    node_id: str | None = None
    types: dict[str, _Subscription] = field(default_factory=dict)


class AdsServer:
    """`envoy.service.discovery.v3.AggregatedDiscoveryService`, state of the world only."""

    def __init__(self, cache: SnapshotCache, hooks: Hooks | None = None) -> None:
        self._cache = cache
        self._hooks = hooks or Hooks()
        self._stream_ids = itertools.count(1)
        self._nonces = itertools.count(1)

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        stream = _Stream(next(self._stream_ids))
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[object] = asyncio.Queue()

        def wake() -> None:  # called on the thread that set the snapshot
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, _CHANGED)
            except RuntimeError:  # the loop is closed: the stream is gone
                pass

        cancel_watch = self._cache.watch(wake)
        reader = asyncio.create_task(_read_requests(request_iterator, inbox))
        self._hook(self._hooks.on_stream_open, stream.stream_id)
        try:
            while True:
                items = [await inbox.get()]
                while not inbox.empty():
                    items.append(inbox.get_nowait())
                for item in items:
                    if item is _CLOSED:
                        return
                    if item is not _CHANGED:
                        self._on_request(stream, item)
                for response in self._responses(stream):
                    yield response
        finally:
            cancel_watch()
            reader.cancel()
            if stream.node_id is not None:
                self._cache.stream_closed(stream.node_id)
            self._hook(self._hooks.on_stream_closed, stream.stream_id, stream.node_id or "")

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "incremental xDS is not served; use state-of-the-world ADS (api_type: GRPC)",
        )

    def _on_request(self, stream: _Stream, request: Any) -> None:
        """Record the request's ACK/NACK and subscription (nothing is sent from here)."""
        self._hook(self._hooks.on_request, stream.stream_id, request)
        if stream.node_id is None:
            stream.node_id = request.node.id
            self._cache.stream_opened(stream.node_id)
        node_id = stream.node_id
        type_url = request.type_url
        if type_url not in resources.PUSH_ORDER:
            log.warning("xDS node %s asked for unsupported type %s", node_id, type_url)
            return
        sub = stream.types.setdefault(type_url, _Subscription())
        if request.response_nonce:
            if request.response_nonce != sub.nonce:
                return  # stale: answers a response superseded since
            if request.HasField("error_detail"):
                error = request.error_detail.message
                NACKS.labels(resources.short_name(type_url)).inc()
                log.warning(
                    "xDS node %s rejected %s version %s (keeps %s): %s",
                    node_id,
                    resources.short_name(type_url),
                    sub.sent_version,
                    request.version_info or "none",
                    error,
                )
                self._cache.record_nack(node_id, type_url, request.version_info, error)
            else:
                self._cache.record_ack(node_id, type_url, request.version_info)
        names = frozenset(request.resource_names)
        if "*" in names or (not names and type_url in resources.WILDCARD_TYPES):
            sub.names = None
        else:
            sub.names = names

    def _responses(self, stream: _Stream) -> list[Any]:
        """A response for each subscribed type whose version or names changed, in push order."""
        snapshot = self._cache.snapshot
        if snapshot is None or stream.node_id is None:
            return []
        out = []
        for type_url in resources.PUSH_ORDER:
            sub = stream.types.get(type_url)
            if sub is None or (sub.names is not None and not sub.names):
                continue  # not subscribed, or subscribed to nothing
            version = snapshot.version(type_url)
            if sub.sent_version == version and sub.sent_names == sub.names:
                continue
            available = snapshot.resources(type_url)
            names = sorted(available if sub.names is None else sub.names & available.keys())
            response = discovery_pb2.DiscoveryResponse(
                version_info=version,
                type_url=type_url,
                nonce=str(next(self._nonces)),
                resources=[
                    any_pb2.Any(
                        type_url=type_url,
                        value=available[name].SerializeToString(deterministic=True),
                    )
                    for name in names
                ],
            )
            sub.sent_version, sub.sent_names, sub.nonce = version, sub.names, response.nonce
            self._cache.record_sent(stream.node_id, type_url, version, response.nonce)
            PUSHES.labels(resources.short_name(type_url)).inc()
            self._hook(self._hooks.on_response, stream.stream_id, response)
            out.append(response)
        return out

    @staticmethod
    def _hook(hook: Callable[..., None] | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            log.exception("xDS hook %s failed", getattr(hook, "__name__", hook))


async def _read_requests(requests: AsyncIterator[Any], inbox: asyncio.Queue[object]) -> None:
    """Move the client's requests into the stream's inbox; `_CLOSED` when they end."""
    try:
        async for request in requests:
            inbox.put_nowait(request)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # the client went away mid-read
        log.debug("xDS stream read ended: %s", e)
    inbox.put_nowait(_CLOSED)


def add_to_server(
    server: grpc.aio.Server, cache: SnapshotCache, hooks: Hooks | None = None
) -> AdsServer:
    """Serve ADS from `cache` on `server` (a grpc.aio server, not started yet)."""
    servicer = AdsServer(cache, hooks)
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    return servicer
