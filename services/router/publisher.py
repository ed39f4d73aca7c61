"""Registry state → Envoy config: on every join, drain or death, rebuild and publish the snapshot.

Changes are coalesced over a short window (a burst of joins at start-up is one push) and the
snapshot cache sends Envoy only the types whose content changed — in practice one EDS update
per membership change, well within a second. A stale (silent) engine stays in its cluster as
UNHEALTHY and turns HEALTHY again when it reports. A snapshot that cannot be built (it should
not happen: the registry keeps one engine per address) is logged and counted, and Envoy keeps
the last good one; the next change tries again.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter

from services.common.server import host_port
from services.router.config import MeshConfig
from services.router.registry import Registry
from services.router.xds.builder import (
    Endpoint,
    MeshSpec,
    PoolSpec,
    SafetySpec,
    TlsSpec,
    TracingSpec,
    build_snapshot,
)
from services.router.xds.cache import SnapshotCache

log = logging.getLogger(__name__)

COALESCE_SECONDS = 0.05

BUILD_ERRORS = Counter(
    "switchyard_router_xds_build_errors_total",
    "Registry changes whose xDS snapshot could not be built (Envoy kept the last good one).",
)


class XdsPublisher:
    def __init__(
        self, cfg: MeshConfig, registry: Registry, cache: SnapshotCache, router_address: str
    ) -> None:
        self._cfg = cfg
        self._registry = registry
        self._cache = cache
        self._router_host, self._router_port = host_port(router_address)
        self._pending: asyncio.TimerHandle | None = None
        self._started = False
        self.published = 0
        registry.subscribe(self.changed)

    def use_config(self, cfg: MeshConfig) -> None:
        """A reloaded mesh config (pools added or removed): published like any change."""
        self._cfg = cfg
        self.changed()

    def start(self, delay: float = 0.0) -> None:
        """Publish the first snapshot after `delay` seconds, then on every change. Until the
        first one, Envoy (after a router restart) keeps serving on its last good config while
        the engines register again."""
        self._started = True
        if delay <= 0:
            self.publish()
        elif self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(delay, self.publish)

    def spec(self) -> MeshSpec:
        listen_host, listen_port = host_port(self._cfg.envoy.listen)
        pools = []
        for pool in self._cfg.pools:
            endpoints = []
            for e in sorted(self._registry.engines(pool.name), key=lambda e: e.engine_id):
                host, port = host_port(e.address)
                endpoints.append(
                    Endpoint(e.engine_id, host, port, draining=e.draining, healthy=not e.stale)
                )
            pools.append(PoolSpec(pool.name, tuple(endpoints)))
        safety = None
        if self._cfg.safety.enabled:
            safety_host, safety_port = host_port(self._cfg.safety.listen)
            safety = SafetySpec(safety_host, safety_port, fail_open=self._cfg.safety.fail_open)
        tracing = None
        if self._cfg.tracing.otlp_endpoint:
            otlp_host, otlp_port = host_port(self._cfg.tracing.otlp_endpoint)
            tracing = TracingSpec(otlp_host, otlp_port, self._cfg.tracing.sampling_ratio)
        return MeshSpec(
            listener_address=listen_host,
            listener_port=listen_port,
            router_host=self._router_host,
            router_port=self._router_port,
            pools=tuple(pools),
            safety=safety,
            tracing=tracing,
            per_try_timeout_seconds=self._cfg.envoy.per_try_timeout_seconds,
            ext_proc_timeout_seconds=self._cfg.envoy.ext_proc_timeout_seconds,
            # Envoy's own (codec) limits are above the router's, which tells the client why.
            max_request_headers_kb=min(8192, self._cfg.envoy.max_request_headers_kb * 3 // 2),
            max_headers_count=self._cfg.envoy.max_headers_count * 2,
            max_concurrent_streams=self._cfg.envoy.max_concurrent_streams,
            tls=None if self._cfg.tls.plaintext else TlsSpec(str(self._cfg.envoy.sds_dir or "sds")),
        )

    def publish(self) -> None:
        self._pending = None
        try:
            self._cache.set_snapshot(build_snapshot(self.spec()))
        except ValueError:
            BUILD_ERRORS.inc()
            log.exception("xDS snapshot not built; Envoy keeps the last good one")
            return
        self.published += 1

    def changed(self) -> None:
        if self._started and self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(COALESCE_SECONDS, self.publish)
