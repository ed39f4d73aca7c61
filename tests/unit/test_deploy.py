"""deploy/compose and deploy/grafana, checked without Docker.

The compose files are validated against the Compose Specification's JSON schema (vendored in
deploy/compose/compose-spec.schema.json), then for the wiring they rely on: Jaeger, Prometheus
and Grafana share the mesh's network namespace, Prometheus reads the targets file that
`switchyard up` writes on a shared volume, mounts point at files that exist. `docker compose
config` runs as well where Docker's compose plugin is installed.

The dashboard is checked for structure and for its queries: every metric and label they use must
be one the services export (METRICS below, cross-checked against the metric objects in the code),
and every legend label must survive the query's aggregation.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from services.router.config import MeshConfig, load_mesh_config

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yaml"
COMPOSE_GPU = COMPOSE_DIR / "docker-compose.gpu.yaml"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "switchyard.json"

OBSERVERS = ("jaeger", "prometheus", "grafana")  # the services in the mesh's namespace
PUBLISHED = {
    8080: "Envoy",
    9901: "Envoy admin",
    16686: "Jaeger",
    9090: "Prometheus",
    3000: "Grafana",
}

# -- the metrics the dashboard may use ---------------------------------------------------------
# Exposition names (counters with _total) → their labels. Histograms are listed by base name and
# queried as <name>_bucket (with le), _sum or _count. Prometheus adds `job` and `instance` to
# every series; targets.json gives engine targets `pool` and `engine` too, so vLLM's series have
# them (vLLM's own `engine`, its core index, becomes `exported_engine`).
ENGINE = ("pool", "engine", "model")
VLLM = ("pool", "engine", "model_name", "exported_engine")
ENVOY_CLUSTER = ("envoy_cluster_name",)
ENVOY_HCM = ("envoy_http_conn_manager_prefix",)
METRICS: dict[str, tuple[str, ...]] = {
    # engine (services/engine/metrics.py)
    "switchyard_engine_ttft_seconds": ENGINE,
    "switchyard_engine_inter_token_latency_seconds": ENGINE,
    "switchyard_engine_request_duration_seconds": ENGINE,
    "switchyard_engine_requests_total": (*ENGINE, "outcome"),
    "switchyard_engine_generated_tokens_total": ENGINE,
    "switchyard_engine_prompt_tokens_total": ENGINE,
    "switchyard_engine_cached_prompt_tokens_total": ENGINE,
    "switchyard_engine_in_flight_requests": ENGINE,
    "switchyard_engine_draining": ENGINE,
    # vLLM's own, re-exported by the engine
    "vllm:num_requests_running": VLLM,
    "vllm:num_requests_waiting": VLLM,
    "vllm:kv_cache_usage_perc": VLLM,
    # router (scheduling/scheduler.py, xds/server.py, metrics.py)
    "switchyard_router_decisions_total": ("pool", "reason"),
    "switchyard_router_pick_duration_seconds": (),
    "switchyard_router_plugin_duration_seconds": ("extension_point", "plugin_type", "plugin_name"),
    "switchyard_router_xds_pushes_total": ("type",),
    "switchyard_router_xds_nacks_total": ("type",),
    "switchyard_router_engine_queue_depth": ("pool", "engine"),
    "switchyard_router_engine_kv_cache_usage_ratio": ("pool", "engine"),
    "switchyard_router_engine_prefix_cache_hit_ratio": ("pool", "engine"),
    # safety (services/safety/metrics.py)
    "switchyard_safety_findings_total": ("path", "type", "action"),
    "switchyard_safety_scan_seconds": ("path",),
    "switchyard_safety_held_back_bytes": (),
    "switchyard_safety_chunks_scanned_total": ("path",),
    "switchyard_safety_turns_total": ("outcome",),
    "switchyard_safety_active_streams": (),
    # Envoy's /stats/prometheus (names checked against a running Envoy 1.36)
    "envoy_cluster_upstream_rq_total": ENVOY_CLUSTER,
    "envoy_cluster_upstream_rq_active": ENVOY_CLUSTER,
    "envoy_cluster_upstream_rq_retry": ENVOY_CLUSTER,
    "envoy_cluster_health_check_healthy": ENVOY_CLUSTER,
    "envoy_cluster_membership_healthy": ENVOY_CLUSTER,
    "envoy_cluster_membership_total": ENVOY_CLUSTER,
    "envoy_http_downstream_rq_total": ENVOY_HCM,
    "envoy_http_downstream_rq_active": ENVOY_HCM,
    "envoy_http_downstream_rq_xx": (*ENVOY_HCM, "envoy_response_code_class"),
    "envoy_http_downstream_rq_time": ENVOY_HCM,
}
HISTOGRAMS = {
    "switchyard_engine_ttft_seconds",
    "switchyard_engine_inter_token_latency_seconds",
    "switchyard_engine_request_duration_seconds",
    "switchyard_router_pick_duration_seconds",
    "switchyard_router_plugin_duration_seconds",
    "switchyard_safety_scan_seconds",
    "switchyard_safety_held_back_bytes",
    "envoy_http_downstream_rq_time",
}
SCRAPE_LABELS = ("job", "instance")
# The modules that define our metric objects (imported for the cross-check).
METRIC_MODULES = (
    "services.engine.metrics",
    "services.safety.metrics",
    "services.router.scheduling.scheduler",
    "services.router.xds.server",
)
# Per-engine gauges the router computes at scrape time (a custom collector, no metric objects).
ROUTER_COLLECTED = {
    "switchyard_router_engine_queue_depth",
    "switchyard_router_engine_kv_cache_usage_ratio",
    "switchyard_router_engine_prefix_cache_hit_ratio",
}


def series_labels() -> dict[str, set[str]]:
    """Every series name a query may select → the labels it may match or group by."""
    out: dict[str, set[str]] = {}
    for name, labels in METRICS.items():
        allowed = {*labels, *SCRAPE_LABELS}
        if name in HISTOGRAMS:
            out[f"{name}_bucket"] = allowed | {"le"}
            out[f"{name}_sum"] = out[f"{name}_count"] = allowed
        else:
            out[name] = allowed
    return out


# -- a small PromQL reader: enough to find metric names and labels ---------------------------
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}


def parse_promql(expr: str) -> tuple[set[str], set[str], set[str]]:
    """(metric names, labels in matchers, labels in by/without/on clauses) of a query."""
    text = _STRING.sub('""', expr)
    grouping = {
        label.strip() for m in _GROUPING.finditer(text) for label in m.group(1).split(",")
    } - {""}
    matched = {
        m.group(1)
        for block in _MATCHERS.finditer(text)
        for m in re.finditer(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", block.group(1))
    }
    rest = _RANGE.sub("", _MATCHERS.sub("", _GROUPING.sub("", text)))
    names = {
        m.group(1)
        for m in _IDENT.finditer(rest)
        if not m.group(2) and m.group(1).lower() not in _KEYWORDS
    }
    return names, matched, grouping


def test_promql_reader():
    names, matched, grouping = parse_promql(
        'histogram_quantile(0.99, sum by (le, pool) (rate(a_bucket{pool=~"$pool", x!="}"}'
        "[$__rate_interval]))) / on (pool) group_left sum without (engine) (vllm:b)"
    )
    assert names == {"a_bucket", "vllm:b"}
    assert matched == {"pool", "x"}
    assert grouping == {"le", "pool", "engine"}


# -- the dashboard ----------------------------------------------------------------------------
def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboard_is_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DASHBOARD.read_text() == module.render(), (
        "deploy/grafana/switchyard.json is stale: run .venv/bin/python deploy/grafana/generate.py"
    )


def test_dashboard_structure():
    d = load_dashboard()
    assert d["uid"] and d["title"] and 36 <= d["schemaVersion"] <= 41
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        pos = p["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, p["title"]
        cover = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cover & cells, f"panel {p['title']!r} overlaps another"
        cells |= cover
    for p in query_panels(d):
        assert p["targets"], f"panel {p['title']!r} has no queries"
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var in variables or var in {"__rate_interval", "__range", "__interval"}, (
                    f"{p['title']!r} uses ${var}, which the dashboard does not define"
                )


def metric_of(series: str) -> str:
    """The metric a series belongs to: a histogram's _bucket/_sum/_count → the histogram."""
    base = re.sub(r"_(bucket|sum|count)$", "", series)
    return base if base in HISTOGRAMS else series


def test_dashboard_queries_use_exported_metrics_and_labels():
    known = series_labels()
    used: set[str] = set()
    d = load_dashboard()
    queries = [(p["title"], t) for p in query_panels(d) for t in p["targets"]]
    queries += [
        (f"variable {v['name']}", {"expr": v["query"], "legendFormat": ""})
        for v in d["templating"]["list"]
        if v["type"] == "query"
    ]
    for title, target in queries:
        expr = target["expr"]
        if expr.startswith("label_values("):  # label_values(m{...}, l): read as (m{...}) by (l)
            expr = re.sub(r",\s*(\w+)\)$", r") by (\1)", expr.removeprefix("label_values"))
        names, matched, grouping = parse_promql(expr)
        assert names, f"{title!r}: no metric in {expr!r}"
        unknown = names - known.keys()
        assert not unknown, f"{title!r} queries metrics no service exports: {sorted(unknown)}"
        allowed = set().union(*(known[n] for n in names))
        bad = (matched | grouping) - allowed
        assert not bad, f"{title!r}: labels {sorted(bad)} are not on {sorted(names)}"
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target["legendFormat"]))
        assert legend <= grouping, (
            f"{title!r}: legend labels {sorted(legend - grouping)} are aggregated away"
        )
        used |= {metric_of(n) for n in names}
    # Every metric named in the issue has a panel.
    assert not METRICS.keys() - used, f"metrics without a panel: {sorted(METRICS.keys() - used)}"


def test_known_metrics_match_the_code():
    """METRICS agrees with the metric objects the services define (names and label names)."""
    from prometheus_client.metrics import MetricWrapperBase

    defined: dict[str, tuple[str, ...]] = {}
    for module_name in METRIC_MODULES:
        module = importlib.import_module(module_name)
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase):
                # prometheus_client keeps a counter's name without _total, and its label names
                # only as attributes.
                name = obj._name + ("_total" if obj._type == "counter" else "")
                defined[name] = tuple(obj._labelnames)
    ours = {n for n in METRICS if n.startswith("switchyard_")}
    for name in ours & defined.keys():
        assert set(METRICS[name]) == set(defined[name]), f"{name}: code has {defined[name]}"
    assert ours - defined.keys() <= ROUTER_COLLECTED, sorted(
        ours - defined.keys() - ROUTER_COLLECTED
    )

    from services.router import metrics as router_metrics

    class NoEngines:
        def engines(self) -> list[Any]:
            return []

    collector = router_metrics.RegistryCollector(NoEngines())  # type: ignore[arg-type]
    assert {family.name for family in collector.collect()} >= ROUTER_COLLECTED


def test_vllm_metric_names_exist_in_vllm():
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vLLM is not installed")
    source = "".join(
        p.read_text()
        for loc in spec.submodule_search_locations
        for p in Path(loc, "v1", "metrics").glob("*.py")
    )
    for name in (n for n in METRICS if n.startswith("vllm:")):
        assert f'"{name}"' in source, f"vLLM no longer defines {name}"


# -- compose ----------------------------------------------------------------------------------
def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_compose_file_matches_the_compose_spec(path):
    schema = json.loads((COMPOSE_DIR / "compose-spec.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}"
        for e in validator.iter_errors(load_yaml(path))
    ]
    assert not errors, "\n".join(errors)


def test_compose_spec_schema_rejects_mistakes():
    schema = json.loads((COMPOSE_DIR / "compose-spec.schema.json").read_text())
    compose = load_yaml(COMPOSE)
    compose["services"]["jaeger"]["network_mod"] = "service:mesh"
    assert not jsonschema.Draft7Validator(schema).is_valid(compose)


def container_port(spec: str | int | dict[str, Any]) -> int:
    if isinstance(spec, dict):
        return int(spec["target"])
    return int(str(spec).rsplit(":", 1)[-1].split("/")[0])


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def flag_value(command: list[str], name: str) -> str:
    for arg in command:
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} is not set")


def test_compose_wiring():
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    assert set(services) == {"mesh", *OBSERVERS}
    mesh = services["mesh"]

    context = (COMPOSE_DIR / mesh["build"]["context"]).resolve()
    assert context == REPO
    dockerfile = context / mesh["build"]["dockerfile"]
    assert dockerfile.is_file()
    assert "deploy/local/install.sh" in dockerfile.read_text()
    assert (dockerfile.parent / f"{dockerfile.name}.dockerignore").is_file()

    # Everything is published on the mesh: the others have no network of their own.
    assert {container_port(p) for p in mesh["ports"]} == set(PUBLISHED)
    for name in OBSERVERS:
        svc = services[name]
        assert svc["network_mode"] == "service:mesh", name
        assert "ports" not in svc and "networks" not in svc, name
        assert "mesh" in svc["depends_on"], name

    # Bind mounts exist; named volumes are declared.
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"

    # The mesh exports traces to Jaeger in its namespace; OTLP/gRPC is Jaeger's 4317.
    command = mesh["command"]
    assert command[0] == "up"
    assert flag(command, "--otlp-endpoint") == "127.0.0.1:4317"


def mount_target(service: dict[str, Any], source: str) -> str:
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        if parts[0] == source:
            return parts[1]
    raise AssertionError(f"{source} is not mounted")


def test_prometheus_reads_the_targets_file_up_writes():
    compose = load_yaml(COMPOSE)
    mesh, prometheus = compose["services"]["mesh"], compose["services"]["prometheus"]
    targets = Path(flag(mesh["command"], "--metrics-targets"))

    config_path = flag_value(prometheus["command"], "--config.file")
    assert mount_target(prometheus, "./prometheus.yml") == config_path
    config = load_yaml(COMPOSE_DIR / "prometheus.yml")
    files = [
        f
        for job in config["scrape_configs"]
        for sd in job.get("file_sd_configs", [])
        for f in sd["files"]
    ]
    assert files == [str(targets)]
    # The same named volume holds the file in both containers.
    volume = next(
        v.split(":")[0] for v in mesh["volumes"] if v.split(":")[1] == str(targets.parent)
    )
    assert mount_target(prometheus, volume) == str(targets.parent)


def test_grafana_provisioning():
    compose = load_yaml(COMPOSE)
    grafana = compose["services"]["grafana"]
    dashboard_path = mount_target(grafana, "../grafana/switchyard.json")
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard_path
    assert mount_target(grafana, "../grafana/provisioning") == "/etc/grafana/provisioning"

    provisioning = GRAFANA_DIR / "provisioning"
    [provider] = load_yaml(provisioning / "dashboards" / "switchyard.yaml")["providers"]
    assert provider["options"]["path"] == str(Path(dashboard_path).parent)
    [datasource] = load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://127.0.0.1:9090"  # Prometheus, in the same namespace


def test_compose_pools_load_and_match_the_local_mesh(monkeypatch, tmp_path):
    monkeypatch.setenv("SWITCHYARD_MODELS", str(tmp_path))
    compose = load_yaml(COMPOSE)
    command = compose["services"]["mesh"]["command"]
    config_arg = re.sub(r"\$\{SWITCHYARD_POOLS:-([^}]*)\}", r"\1", flag(command, "--config"))
    cfg = load_mesh_config(REPO / config_arg)
    local = load_mesh_config(REPO / "deploy" / "local" / "pools.yaml")

    # Published ports reach Envoy: it listens on every interface of the container.
    for address, port in ((cfg.envoy.listen, 8080), (cfg.envoy.admin, 9901)):
        assert address == f"0.0.0.0:{port}"

    def essentials(c: MeshConfig) -> dict[str, Any]:
        return {
            "pools": [p.model_dump() for p in c.pools],  # engine configs resolved to absolute paths
            "aliases": c.aliases,
            "tiers": c.tiers,
            "fallbacks": c.fallbacks,
            "default_model": c.default_model,
            "profile": c.router.profile,
            "fail_open": c.safety.fail_open,
        }

    assert essentials(cfg) == essentials(local)
    assert cfg.safety.config is not None and local.safety.config is not None
    assert (COMPOSE_DIR / cfg.safety.config).resolve() == (
        REPO / "deploy" / "local" / local.safety.config
    ).resolve()


def docker_compose() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    return [docker, "compose"] if probe.returncode == 0 else None


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_GPU]], ids=["cpu", "cpu+gpu"])
def test_docker_compose_config(files):
    compose = docker_compose()
    if compose is None:
        pytest.skip("Docker's compose plugin is not installed")
    args = [a for f in files for a in ("-f", str(f))]
    result = subprocess.run(
        [*compose, *args, "config", "-q"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
