"""Writes deploy/grafana/switchyard.json, the Grafana dashboard of a Switchyard mesh.

    .venv/bin/python deploy/grafana/generate.py        # after editing the panels below

The JSON is committed (Grafana provisions it as is) and tests/unit/test_deploy.py checks that it
is what this script writes, and that every metric and label its queries use is one the services
export. Panels are grouped in rows: overview, engines, router, safety, Envoy. Variables: the
Prometheus datasource, then pool and engine (from the engines' own series).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "switchyard.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "[$__rate_interval]"
ENG = 'pool=~"$pool", engine=~"$engine"'  # engine series: the pool and engine variables
POOL = 'pool=~"$pool"'
INGRESS = 'envoy_http_conn_manager_prefix="switchyard_ingress"'  # Envoy's listener (stat prefix)
CLUSTERS = 'envoy_cluster_name=~"pool_$pool"'  # one Envoy cluster per pool: pool_<name>

Target = tuple[str, str]  # (PromQL, legend)


def quantiles(
    metric: str, by: str, matchers: str = "", qs: tuple[float, ...] = (0.5, 0.99)
) -> list[Target]:
    """p50/p99 (or `qs`) of a histogram, per `by` labels ("" for one series)."""
    group = f"le, {by}" if by else "le"
    legend = " ".join(f"{{{{{label.strip()}}}}}" for label in by.split(",") if label.strip())
    return [
        (
            f"histogram_quantile({q}, sum by ({group}) "
            f"(rate({metric}_bucket{_braces(matchers)}{RATE})))",
            f"{legend} p{round(q * 100)}".strip(),
        )
        for q in qs
    ]


class Layout:
    """Places panels left to right on Grafana's 24-column grid and numbers them."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = 0
        self.y = 0
        self.row_height = 0

    def _place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_height = max(self.row_height, h)
        return pos

    def _add(self, panel: dict[str, Any], w: int, h: int) -> None:
        self.panels.append({"id": len(self.panels) + 1, "gridPos": self._place(w, h), **panel})

    def row(self, title: str) -> None:
        self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        self._add({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)
        self.x, self.y, self.row_height = 0, self.y + 1, 0

    def timeseries(
        self,
        title: str,
        description: str,
        targets: list[Target],
        unit: str,
        *,
        w: int = 8,
        h: int = 8,
        max_value: float | None = None,
    ) -> None:
        defaults: dict[str, Any] = {
            "unit": unit,
            "min": 0,
            "color": {"mode": "palette-classic"},
            "custom": {
                "drawStyle": "line",
                "lineWidth": 1,
                "fillOpacity": 10,
                "showPoints": "never",
                "spanNulls": False,
            },
        }
        if max_value is not None:
            defaults["max"] = max_value
        self._add(
            {
                "type": "timeseries",
                "title": title,
                "description": description,
                "datasource": DS,
                "fieldConfig": {"defaults": defaults, "overrides": []},
                "options": {
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"},
                },
                "targets": _targets(targets),
            },
            w,
            h,
        )

    def stat(
        self, title: str, description: str, expr: str, unit: str, red_above: float | None = None
    ) -> None:
        steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
        if red_above is not None:
            steps.append({"color": "red", "value": red_above})
        self._add(
            {
                "type": "stat",
                "title": title,
                "description": description,
                "datasource": DS,
                "fieldConfig": {
                    "defaults": {
                        "unit": unit,
                        "color": {"mode": "thresholds"},
                        "thresholds": {"mode": "absolute", "steps": steps},
                    },
                    "overrides": [],
                },
                "options": {
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value",
                    "graphMode": "area",
                    "textMode": "auto",
                    "justifyMode": "auto",
                    "orientation": "auto",
                },
                "targets": _targets([(expr, title)]),
            },
            3,
            4,
        )


def _targets(targets: list[Target]) -> list[dict[str, Any]]:
    return [
        {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
        for i, (expr, legend) in enumerate(targets)
    ]


def _braces(matchers: str) -> str:
    return f"{{{matchers}}}" if matchers else ""


def _hit_rate(by: str) -> str:
    grouping = f" by ({by}) " if by else ""
    return (
        f"sum{grouping}(rate(switchyard_engine_cached_prompt_tokens_total{{{ENG}}}{RATE}))"
        f" / sum{grouping}(rate(switchyard_engine_prompt_tokens_total{{{ENG}}}{RATE}))"
    )


def overview(d: Layout) -> None:
    d.row("Overview")
    d.stat(
        "Turns/s",
        "Turns arriving at Envoy's listener.",
        f"sum(rate(envoy_http_downstream_rq_total{{{INGRESS}}}{RATE}))",
        "reqps",
    )
    ttft = "switchyard_engine_ttft_seconds"
    d.stat("TTFT p50", "Engines' time to first token.", quantiles(ttft, "", ENG, (0.5,))[0][0], "s")
    d.stat(
        "TTFT p99", "Engines' time to first token.", quantiles(ttft, "", ENG, (0.99,))[0][0], "s"
    )
    d.stat(
        "Output tokens/s",
        "Tokens generated by the selected engines.",
        f"sum(rate(switchyard_engine_generated_tokens_total{{{ENG}}}{RATE}))",
        "short",
    )
    d.stat(
        "Prefix cache hit rate",
        "Share of prompt tokens served from the engines' prefix caches.",
        _hit_rate(""),
        "percentunit",
    )
    d.stat(
        "Healthy endpoints",
        "Engines Envoy routes to (healthy members of the pool clusters).",
        f"sum(envoy_cluster_membership_healthy{{{CLUSTERS}}})",
        "short",
    )
    d.stat(
        "xDS NACKs",
        "Configurations Envoy rejected in the time range (should stay 0).",
        "sum(increase(switchyard_router_xds_nacks_total[$__range]))",
        "short",
        red_above=1,
    )
    d.stat(
        "Safety findings",
        "PII and safety entities the filter acted on in the time range.",
        "sum(increase(switchyard_safety_findings_total[$__range]))",
        "short",
    )


def engines(d: Layout) -> None:
    d.row("Engines")
    d.timeseries(
        "Turns by outcome",
        "Finished turns per second by pool and outcome (finish reason or gRPC status).",
        [
            (
                f"sum by (pool, outcome) (rate(switchyard_engine_requests_total{{{ENG}}}{RATE}))",
                "{{pool}} {{outcome}}",
            )
        ],
        "reqps",
    )
    d.timeseries(
        "Time to first token",
        "From the call's arrival at the engine to its first text delta.",
        quantiles("switchyard_engine_ttft_seconds", "pool", ENG),
        "s",
    )
    d.timeseries(
        "Inter-token latency",
        "Mean time between output tokens of a turn, after the first.",
        quantiles("switchyard_engine_inter_token_latency_seconds", "pool", ENG),
        "s",
    )
    d.timeseries(
        "Turn duration",
        "From the call's arrival at the engine to its Final message.",
        quantiles("switchyard_engine_request_duration_seconds", "pool", ENG),
        "s",
    )
    d.timeseries(
        "Tokens/s",
        "Prompt tokens processed (of them, served from the prefix cache) and tokens generated.",
        [
            (
                f"sum by (pool) (rate(switchyard_engine_{kind}_tokens_total{{{ENG}}}{RATE}))",
                f"{{{{pool}}}} {kind.replace('_', ' ')}",
            )
            for kind in ("prompt", "cached_prompt", "generated")
        ],
        "short",
    )
    d.timeseries(
        "Prefix cache hit rate",
        "Share of prompt tokens each engine served from its prefix cache.",
        [(_hit_rate("pool, engine"), "{{engine}}")],
        "percentunit",
        max_value=1,
    )
    d.timeseries(
        "In-flight turns",
        "Turns each engine has accepted and not finished.",
        [(f"sum by (pool, engine) (switchyard_engine_in_flight_requests{{{ENG}}})", "{{engine}}")],
        "short",
    )
    d.timeseries(
        "vLLM running and waiting",
        "Sequences in vLLM's running batch and in its waiting queue, per engine.",
        [
            (f"sum by (pool, engine) (vllm:num_requests_running{{{ENG}}})", "{{engine}} running"),
            (f"sum by (pool, engine) (vllm:num_requests_waiting{{{ENG}}})", "{{engine}} waiting"),
        ],
        "short",
    )
    d.timeseries(
        "vLLM KV-cache usage",
        "Share of each engine's KV-cache blocks in use.",
        [(f"max by (pool, engine) (vllm:kv_cache_usage_perc{{{ENG}}})", "{{engine}}")],
        "percentunit",
        max_value=1,
    )
    d.timeseries(
        "Draining",
        "1 while an engine refuses new turns (drain), letting in-flight turns finish.",
        [(f"max by (pool, engine) (switchyard_engine_draining{{{ENG}}})", "{{engine}}")],
        "short",
        w=24,
        h=5,
        max_value=1,
    )


def router(d: Layout) -> None:
    d.row("Router")
    d.timeseries(
        "Routing decisions by reason",
        "Committed picks per second by pool and the scorer that decided them "
        "(only-candidate, tie, unavailable, or a scorer's name).",
        [
            (
                f"sum by (pool, reason) (rate(switchyard_router_decisions_total{{{POOL}}}{RATE}))",
                "{{pool}} {{reason}}",
            )
        ],
        "ops",
    )
    d.timeseries(
        "Pick latency",
        "One routing decision: filters, scorers, picker and accounting.",
        quantiles("switchyard_router_pick_duration_seconds", ""),
        "s",
    )
    d.timeseries(
        "Scheduling plugin latency p99",
        "Each filter, scorer and picker call over the candidate engines.",
        quantiles(
            "switchyard_router_plugin_duration_seconds",
            "extension_point, plugin_type, plugin_name",
            qs=(0.99,),
        ),
        "s",
    )
    d.timeseries(
        "Queue depth (router view)",
        "Each engine's queue as the router scores it: its last load report plus the turns "
        "routed to it since.",
        [(f"max by (pool, engine) (switchyard_router_engine_queue_depth{{{ENG}}})", "{{engine}}")],
        "short",
    )
    d.timeseries(
        "KV-cache usage (router view)",
        "Each engine's KV-cache utilization from its load reports.",
        [
            (
                f"max by (pool, engine) (switchyard_router_engine_kv_cache_usage_ratio{{{ENG}}})",
                "{{engine}}",
            )
        ],
        "percentunit",
        max_value=1,
    )
    d.timeseries(
        "Prefix cache hit ratio (router view)",
        "Each engine's prefix-cache hit ratio from its load reports.",
        [
            (
                f"max by (pool, engine) (switchyard_router_engine_prefix_cache_hit_ratio{{{ENG}}})",
                "{{engine}}",
            )
        ],
        "percentunit",
        max_value=1,
    )
    d.timeseries(
        "xDS pushes and NACKs",
        "Responses the control plane sent Envoy, and the ones Envoy rejected, by resource type.",
        [
            (f"sum by (type) (rate(switchyard_router_xds_pushes_total{RATE}))", "push {{type}}"),
            (f"sum by (type) (rate(switchyard_router_xds_nacks_total{RATE}))", "NACK {{type}}"),
        ],
        "ops",
        w=24,
        h=6,
    )


def safety(d: Layout) -> None:
    d.row("Safety")
    d.timeseries(
        "Turns by outcome",
        "Turns through the filter: passed, prompt redacted/rejected/denied, blocked, error.",
        [(f"sum by (outcome) (rate(switchyard_safety_turns_total{RATE}))", "{{outcome}}")],
        "reqps",
    )
    d.timeseries(
        "Findings by type and action",
        "Entities found per second, by path (prompt, response), type and the action taken.",
        [
            (
                f"sum by (path, type, action) (rate(switchyard_safety_findings_total{RATE}))",
                "{{path}} {{type}} {{action}}",
            )
        ],
        "ops",
    )
    d.timeseries(
        "Scan latency per chunk",
        "Latency the filter adds to each scanned chunk (decode, scan, rewrite).",
        quantiles("switchyard_safety_scan_seconds", "path"),
        "s",
    )
    d.timeseries(
        "Chunks scanned",
        "One per prompt, one per streamed response chunk.",
        [(f"sum by (path) (rate(switchyard_safety_chunks_scanned_total{RATE}))", "{{path}}")],
        "ops",
    )
    d.timeseries(
        "Held-back bytes",
        "Bytes held back after each response chunk while they could still begin an entity.",
        quantiles("switchyard_safety_held_back_bytes", ""),
        "bytes",
    )
    d.timeseries(
        "Active streams",
        "Turns the filter is processing now.",
        [("sum(switchyard_safety_active_streams)", "active")],
        "short",
    )


def envoy(d: Layout) -> None:
    d.row("Envoy")
    d.timeseries(
        "Downstream turns by response class",
        "Turns at the listener per second; gRPC errors travel in trailers of 2xx responses.",
        [
            (
                f"sum by (envoy_response_code_class) "
                f"(rate(envoy_http_downstream_rq_xx{{{INGRESS}}}{RATE}))",
                "{{envoy_response_code_class}}xx",
            ),
            (f"sum(rate(envoy_http_downstream_rq_total{{{INGRESS}}}{RATE}))", "total"),
        ],
        "reqps",
    )
    d.timeseries(
        "Active streams",
        "Streams open at the listener, and to each pool cluster.",
        [
            (f"sum(envoy_http_downstream_rq_active{{{INGRESS}}})", "downstream"),
            (
                f"sum by (envoy_cluster_name) (envoy_cluster_upstream_rq_active{{{CLUSTERS}}})",
                "{{envoy_cluster_name}}",
            ),
        ],
        "short",
    )
    d.timeseries(
        "Turn duration at Envoy",
        "Whole streamed turns as the listener sees them (Envoy measures in milliseconds).",
        quantiles("envoy_http_downstream_rq_time", "", INGRESS),
        "ms",
    )
    d.timeseries(
        "Upstream requests by pool cluster",
        "Requests Envoy sent to each pool's engines, and its retries (before the first byte).",
        [
            (
                f"sum by (envoy_cluster_name) "
                f"(rate(envoy_cluster_upstream_rq_total{{{CLUSTERS}}}{RATE}))",
                "{{envoy_cluster_name}}",
            ),
            (
                f"sum by (envoy_cluster_name) "
                f"(rate(envoy_cluster_upstream_rq_retry{{{CLUSTERS}}}{RATE}))",
                "{{envoy_cluster_name}} retries",
            ),
        ],
        "reqps",
        w=12,
    )
    d.timeseries(
        "Endpoints by pool cluster",
        "Members of each pool cluster (from EDS), how many are healthy, and how many pass "
        "Envoy's gRPC health checks.",
        [
            (
                f"sum by (envoy_cluster_name) (envoy_cluster_membership_{what}{{{CLUSTERS}}})",
                f"{{{{envoy_cluster_name}}}} {legend}",
            )
            for what, legend in (("total", "members"), ("healthy", "healthy"))
        ]
        + [
            (
                f"sum by (envoy_cluster_name) (envoy_cluster_health_check_healthy{{{CLUSTERS}}})",
                "{{envoy_cluster_name}} health-checked",
            )
        ],
        "short",
        w=12,
    )


def _variables() -> list[dict[str, Any]]:
    def query_var(name: str, label: str, query: str) -> dict[str, Any]:
        return {
            "type": "query",
            "name": name,
            "label": label,
            "datasource": DS,
            "definition": query,
            "query": query,
            "refresh": 2,  # on time range change: engines come and go
            "multi": True,
            "includeAll": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [],
            "sort": 1,
            "hide": 0,
            "regex": "",
        }

    return [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "current": {},
            "options": [],
            "refresh": 1,
            "regex": "",
            "hide": 0,
        },
        query_var("pool", "Pool", "label_values(switchyard_engine_in_flight_requests, pool)"),
        query_var(
            "engine",
            "Engine",
            'label_values(switchyard_engine_in_flight_requests{pool=~"$pool"}, engine)',
        ),
    ]


def build() -> dict[str, Any]:
    d = Layout()
    for section in (overview, engines, router, safety, envoy):
        section(d)
    return {
        "uid": "switchyard",
        "title": "Switchyard",
        "description": "Engines, router, safety filter and Envoy of a Switchyard mesh.",
        "tags": ["switchyard", "llm", "vllm", "envoy"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "10s",
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {"list": _variables()},
        "panels": d.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
