"""The router's per-engine gauges, read from the registry at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.router import metrics
from services.router.registry import Registry
from services.router.testing import make_engine


def test_gauges_per_pool_and_engine_follow_the_registry():
    reg = Registry()
    make_engine(reg, "a-0", pool="a", running=2, waiting=1, kv_usage=0.5)
    make_engine(reg, "b-0", pool="b", draining=True)
    prom = CollectorRegistry()
    metrics.register(reg, prom)
    samples = {
        (s.name, s.labels["engine"]): (s.labels["pool"], s.value)
        for family in text_string_to_metric_families(generate_latest(prom).decode())
        for s in family.samples
    }
    assert samples[("switchyard_router_engine_queue_depth", "a-0")] == ("a", 3.0)
    assert samples[("switchyard_router_engine_kv_cache_usage_ratio", "a-0")] == ("a", 0.5)
    assert samples[("switchyard_router_engine_serving", "b-0")] == ("b", 0.0)
    assert ("switchyard_router_engine_prefix_cache_hit_ratio", "b-0") in samples

    reg.remove("b-0", "test")
    text = generate_latest(prom).decode()
    assert 'engine="b-0"' not in text
