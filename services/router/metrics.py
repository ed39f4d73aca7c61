"""Per-engine gauges from the router's registry, read at scrape time: what the router believes of
each engine (queue depth including its own in-flight count, KV-cache usage, prefix-cache hit
ratio), labelled by pool and engine so dashboards can aggregate per pool.

Counters and histograms of the router's own work live next to the code they count
(`scheduling.scheduler`: decisions and plugin timings; `xds.server`: pushes and NACKs); the
router's liveness ones (its event loop's lag, engines going silent and coming back) are here.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from services.common.looplag import LAG_BUCKETS
from services.router.registry import Registry

LOOP_LAG = Histogram(
    "switchyard_router_event_loop_lag_seconds",
    "How much later than scheduled the router's event loop ran its monitor tick (time it spent "
    "blocked on one piece of work, or the whole process stalled).",
    buckets=LAG_BUCKETS,
)
STALE_CHANGES = Counter(
    "switchyard_router_engine_stale_changes_total",
    "Engines going silent (went_stale) and reporting again (recovered).",
    ["change"],
)

LABELS = ["pool", "engine"]


class RegistryCollector(Collector):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "switchyard_router_engine_queue_depth",
            "Turns an engine has or is about to get (its latest report plus turns routed since).",
            labels=LABELS,
        )
        kv = GaugeMetricFamily(
            "switchyard_router_engine_kv_cache_usage_ratio",
            "Fraction of an engine's KV-cache blocks in use, from its latest load report.",
            labels=LABELS,
        )
        hits = GaugeMetricFamily(
            "switchyard_router_engine_prefix_cache_hit_ratio",
            "Prefix-cache hit ratio of an engine (cached / queried prompt tokens, cumulative).",
            labels=LABELS,
        )
        serving = GaugeMetricFamily(
            "switchyard_router_engine_serving",
            "1 when the engine takes new turns, 0 while draining, not serving or silent.",
            labels=LABELS,
        )
        for e in self._registry.engines():
            labels = [e.pool, e.engine_id]
            depth.add_metric(labels, e.queue_depth)
            kv.add_metric(labels, e.kv_usage)
            hits.add_metric(labels, e.cache_hit_rate)
            serving.add_metric(labels, 1.0 if e.serving and not e.stale else 0.0)
        yield from (depth, kv, hits, serving)


def register(registry: Registry, into: CollectorRegistry = REGISTRY) -> RegistryCollector:
    collector = RegistryCollector(registry)
    into.register(collector)
    return collector
