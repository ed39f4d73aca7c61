"""`switchyard up`: the whole mesh on this machine — safety filter, router (with xDS), engines per
pool, Envoy.

Start order: the safety service (Envoy calls it for every turn), the router (engines register
with it, Envoy takes its config from it), then
every engine of every pool in parallel (each loads vLLM, 40–70 s on a small CPU machine), then
Envoy, which receives its listener, routes, clusters and endpoints over xDS. `Mesh.start`
returns when Envoy's listener is up and every engine is registered; from then on a supervisor
(`services/mesh/supervisor.py`) restarts any of them that dies, and `state_file` says what each
is doing for `switchyard status`. `Mesh.stop` ends supervision, then drains and stops
everything in reverse order. The integration tests run the same code.

Every address a restarted process must keep (the router's, the safety service's) is fixed when
the mesh starts: a port 0 in the config becomes a free port then, not at each start.

Secure with no setup: the local PKI (services/common/pki.py) is created on first start and every
internal hop is mutual TLS; API keys live in `keys_file` (default ~/.cache/switchyard/keys.json),
and a development key for tenant "dev" is created once and kept in `dev_key_file` (default
~/.cache/switchyard/dev-key, owner-only), where `switchyard chat` finds it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.files import atomic_write, home_path
from services.common.pki import ENVOY, OPERATOR
from services.common.server import host_port, write_ready_file
from services.common.tls import TlsFiles
from services.mesh import procs
from services.mesh.otlp_sink import OtlpFileSink
from services.mesh.scaler import EngineScaler
from services.mesh.supervisor import Child, Process, RestartPolicy, Supervisor
from services.router.config import MeshConfig, load_mesh_config
from services.router.xds import envoy_proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable(host: str) -> str:
    """A wildcard listen address (0.0.0.0, ::) as a local client dials it."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _fixed_port(address: str) -> str:
    """`address` with a port 0 replaced by a free port (a restart must find it again)."""
    host, port = host_port(address)
    return address if port else f"{host}:{free_port()}"


def default_state_file() -> Path:
    """Where `switchyard up` says what its processes are doing ($SWITCHYARD_STATE overrides)."""
    return home_path("up-state.json", "SWITCHYARD_STATE")


def default_dev_key_file() -> Path:
    """Where `switchyard up` keeps the local development API key ($SWITCHYARD_DEV_KEY)."""
    return home_path("dev-key", "SWITCHYARD_DEV_KEY")


DEV_TENANT = "dev"


@dataclass
class Mesh:
    """A running local mesh and its processes."""

    config_path: Path
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="switchyard-up-")))
    free_ports: bool = False  # pick free ports instead of the config's (tests, parallel meshes)
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)
    # Traces: exported over OTLP/gRPC to this HOST:PORT (Jaeger, a collector); when None, to a
    # local sink that keeps them in `traces_dir` for `switchyard trace`.
    otlp_endpoint: str | None = None
    tracing_enabled: bool = True  # False: no tracer anywhere (no Envoy tracer, no spans)
    # Engines run this much nicer than the rest: on a machine their busy CPU work fills, the
    # router, the safety filter and Envoy (each turn's latency-critical hops) still get the CPU
    # (and so does everything else on the machine, a load generator included).
    engine_nice: int = 0
    trace_sampling: float = 1.0
    traces_dir: Path | None = None
    # Write a Prometheus file_sd target list of every /metrics endpoint here once up.
    metrics_targets: Path | None = None
    # Restart processes that die (backoff, crash-loop limit); say what each does in state_file.
    supervise: bool = True
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    state_file: Path | None = None
    supervisor: Supervisor | None = None
    # API keys (hashes) of the mesh; None: the config's auth.keys_file, else the user default.
    keys_file: Path | None = None
    # The local development key (tenant "dev"), created once: `dev_key` once started.
    dev_key_file: Path = field(default_factory=default_dev_key_file)
    dev_key: str = ""
    # The quota ledger in this Redis (redis://host:port/db) instead of the router's memory.
    redis_url: str | None = None
    # Tenant policies (live, admin API) in this file; None: the config's, else the user default.
    tenants_file: Path | None = None
    sink: OtlpFileSink | None = None
    cfg: MeshConfig | None = None
    router: procs.ServiceProcess | None = None
    safety: procs.ServiceProcess | None = None
    engines: list[procs.EngineProcess] = field(default_factory=list)
    envoy: subprocess.Popen[bytes] | None = None
    envoy_log: Path | None = None
    # Pools' engines started and stopped by the router's autoscaling signal (`autoscale.pools`).
    scaler: EngineScaler | None = None
    _engine_pool: dict[str, str] = field(default_factory=dict)  # engine name → its pool
    _engine_timeout: float = 600.0

    @property
    def endpoint(self) -> str:
        """The mesh's gRPC endpoint as a client on this machine reaches it."""
        assert self.cfg is not None
        host, port = host_port(self.cfg.envoy.listen)
        return f"{_reachable(host)}:{port}"

    @property
    def router_address(self) -> str:
        """The router's gRPC address (fixed when the mesh starts: a restart keeps it)."""
        assert self.cfg is not None
        host, port = host_port(self.cfg.router.listen)
        return f"{_reachable(host)}:{port}"

    @property
    def envoy_admin(self) -> str:
        assert self.cfg is not None
        host, port = host_port(self.cfg.envoy.admin)
        return f"http://{_reachable(host)}:{port}"

    @property
    def tracing(self) -> dict[str, Any]:
        """The `tracing` config every service (and, through the router, Envoy) runs with."""
        endpoint = self.otlp_endpoint or (self.sink.endpoint if self.sink else "")
        if not self.tracing_enabled:
            endpoint = ""
        return {"otlp_endpoint": endpoint, "sampling_ratio": self.trace_sampling}

    def _effective_config(self) -> Path:
        """The config actually run: ports made free if asked, engine paths absolute, tracing."""
        data: dict[str, Any] = yaml.safe_load(self.config_path.read_text())
        data["tracing"] = {**(data.get("tracing") or {}), **self.tracing}
        if self.free_ports:
            data.setdefault("router", {})["listen"] = f"127.0.0.1:{free_port()}"
            envoy = data.setdefault("envoy", {})
            envoy["listen"] = f"127.0.0.1:{free_port()}"
            envoy["admin"] = f"127.0.0.1:{free_port()}"
            data.setdefault("safety", {})["listen"] = f"127.0.0.1:{free_port()}"
        for section, default in (("router", "127.0.0.1:50051"), ("safety", "127.0.0.1:50055")):
            part = data.setdefault(section, {}) or {}
            data[section] = {**part, "listen": _fixed_port(part.get("listen", default))}
        safety = data.get("safety") or {}
        if safety.get("config") and not Path(safety["config"]).is_absolute():
            safety["config"] = str((self.config_path.parent / safety["config"]).resolve())
        # Envoy's SDS files live in the workdir; the router points Envoy's clusters at them.
        data.setdefault("envoy", {})["sds_dir"] = str((self.workdir / "sds").resolve())
        if self.keys_file is not None:
            data.setdefault("auth", {})["keys_file"] = str(self.keys_file)
        if self.tenants_file is not None:
            data.setdefault("tenants", {})["file"] = str(self.tenants_file)
        if self.redis_url is not None:
            data.setdefault("quotas", {})["redis_url"] = self.redis_url
        for pool in data.get("pools", []):
            for group in pool.get("engines", []):
                p = Path(group["config"])
                if not p.is_absolute():
                    group["config"] = str((self.config_path.parent / p).resolve())
            for model in pool.get("models", []):
                t = str(model["tokenizer"])
                if "${" not in t and not Path(t).is_absolute():
                    model["tokenizer"] = str((self.config_path.parent / t).resolve())
        path = self.workdir / "mesh.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def start(self, timeout: float = 600.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.tracing_enabled:
            self.say("[up] tracing off")
        elif self.otlp_endpoint is None:
            from services.mesh.trace import default_traces_dir

            self.sink = OtlpFileSink(self.traces_dir or default_traces_dir()).start()
            self.say(f"[up] keeping traces in {self.sink.directory} (switchyard trace)")
        else:
            self.say(f"[up] exporting traces to {self.otlp_endpoint} (OTLP/gRPC)")
        cfg_path = self._effective_config()
        self.cfg = load_mesh_config(cfg_path)
        cfg = self.cfg
        if cfg.tls.plaintext:
            self.say("[up] WARNING: tls.plaintext is set: no internal hop is authenticated")
        else:
            self.operator_tls()  # creates the local PKI on first start
        self.supervisor = Supervisor(
            self.say, policy=self.restart_policy, on_change=self.write_state
        )
        if cfg.safety.enabled:
            self.say(f"[up] starting the safety filter on {cfg.safety.listen}")
            self.safety = self._start_safety()
            self.safety.wait_ready(timeout=60, on_progress=self.say)
            self._supervise("safety", "safety", self.safety, self._start_safety, 60)
        self.say(f"[up] starting the router on {cfg.router.listen} (logs in {self.workdir})")
        self.router = self._start_router()
        self.router.wait_ready(timeout=120, on_progress=self.say)
        self._supervise("router", "router", self.router, self._start_router, 120)
        self._ensure_dev_key()

        self._engine_timeout = timeout
        starters = []
        for pool in cfg.pools:
            index = 0
            for group in pool.engines:
                for _ in range(group.count):
                    name = f"{pool.name}-{index}"
                    index += 1
                    version = f", version {group.version}" if group.version else ""
                    self.say(f"[up] starting engine {name} ({group.config.name}{version})")
                    starter = self._engine_starter(name, pool.name, group.config, group.version)
                    starters.append((name, starter))
                    self._engine_pool[name] = pool.name
                    self.engines.append(starter())
        for (name, starter), engine in zip(starters, list(self.engines), strict=True):
            engine.wait_ready(timeout=timeout, on_progress=self.say)
            self._supervise(name, "engine", engine, starter, timeout)

        admin_host, admin_port = host_port(cfg.envoy.admin)
        self.envoy_log = self.workdir / "envoy.log"
        self.say(f"[up] starting Envoy (admin http://{cfg.envoy.admin})")
        self.envoy = self._start_envoy()

        def envoy_ready(p: Process) -> None:
            envoy_proc.wait_listener(
                admin_port, "switchyard_ingress", timeout=60, host=_reachable(admin_host)
            )

        envoy_ready(self.envoy)
        self._supervise(
            "envoy", "envoy", self.envoy, self._start_envoy, 60, ready=envoy_ready,
            log_path=self.envoy_log,
        )  # fmt: skip
        self.wait_routable(timeout=60)
        if self.metrics_targets is not None:
            self.write_metrics_targets(self.metrics_targets)
        if self.supervise:
            self.supervisor.start()
            self.scaler = EngineScaler(self, self.say)
            if self.scaler.active:
                pools = ", ".join(
                    f"{n} {b.min_engines}..{b.max_engines}" for n, b in cfg.autoscale.pools.items()
                )
                self.say(f"[up] autoscaling engines by the router's signal: {pools}")
                self.scaler.start()
        self.write_state()
        self.say(
            f"[up] mesh ready: gRPC endpoint {cfg.envoy.listen} "
            f"({len(self.engines)} engines in {len(cfg.pools)} pools)"
        )

    # -- starting (and restarting) each process ---------------------------------------------

    def operator_tls(self) -> TlsFiles | None:
        """The operator identity (admin calls, direct engine calls); None in a plaintext mesh."""
        assert self.cfg is not None
        return self.cfg.tls.files(OPERATOR)

    def _tls_settings(self) -> dict[str, Any]:
        """The mesh's `tls` section as every service's config takes it."""
        assert self.cfg is not None
        return self.cfg.tls.model_dump(mode="json", exclude_none=True)

    def _ensure_dev_key(self) -> None:
        """The local development key: the one in `dev_key_file` if the mesh still honours it,
        else a new one for tenant "dev" (its secret kept owner-only in `dev_key_file`)."""
        from services.router.auth.config import default_keys_file
        from services.router.auth.keys import KeyStore

        assert self.cfg is not None
        if not self.cfg.auth.enabled:
            return
        store = KeyStore(self.cfg.auth.keys_file or default_keys_file())
        try:
            key = self.dev_key_file.read_text().strip()
        except OSError:
            key = ""
        if not key or store.lookup(key) is None:
            _, key = store.create(
                tenant=DEV_TENANT,
                tier=self.cfg.auth.default_tier,
                name="switchyard up: local development key",
            )
            self.dev_key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(self.dev_key_file, key + "\n", 0o600)
            self.say(f"[up] created the local development API key (tenant {DEV_TENANT!r}) in "
                     f"{self.dev_key_file}")  # fmt: skip
        self.dev_key = key

    def _start_safety(self) -> procs.ServiceProcess:
        assert self.cfg is not None
        cfg = self.cfg
        args = ["safety", "--listen", cfg.safety.listen]
        args += ["--otlp-endpoint", self.tracing["otlp_endpoint"]]
        args += ["--trace-sampling", str(self.trace_sampling)]
        if cfg.safety.config is not None:
            args += ["--config", str(cfg.safety.config)]
        args += ["--tls", json.dumps(self._tls_settings())]
        if cfg.response_cache.enabled:  # (the router's address is fixed before it starts)
            args += ["--response-cache", self.router_address]
        self.safety = procs.start_service(args, name="safety", workdir=self.workdir)
        return self.safety

    def _start_router(self) -> procs.ServiceProcess:
        cfg_path = self.workdir / "mesh.yaml"
        self.router = procs.start_service(
            ["router", "--config", str(cfg_path), "--watch-config", str(self.config_path)],
            name="router",
            workdir=self.workdir,
        )
        return self.router

    def _engine_starter(
        self, name: str, pool: str, config: Path, version: str = ""
    ) -> Callable[[], procs.EngineProcess]:
        def start() -> procs.EngineProcess:
            overrides: dict[str, Any] = {
                "listen": "127.0.0.1:0",
                "engine_id": name,
                "pool": pool,
                "router": self.router_address,
                "tracing": self.tracing,
                "tls": self._tls_settings(),
            }
            if version:  # (a canary arm of the same engine config)
                overrides["model_version"] = version
            engine = procs.start_engine(
                config,
                name=name,
                workdir=self.workdir,
                overrides=overrides,
                nice=self.engine_nice,
            )
            for i, e in enumerate(self.engines):
                if e.name == name:
                    self.engines[i] = engine
            return engine

        return start

    def _start_envoy(self) -> subprocess.Popen[bytes]:
        assert self.cfg is not None and self.envoy_log is not None
        admin_host, admin_port = host_port(self.cfg.envoy.admin)
        router_host, router_port = host_port(self.router_address)
        self.envoy = envoy_proc.start_envoy(
            self.workdir,
            node_id=self.cfg.envoy.node_id,
            admin_port=admin_port,
            admin_host=admin_host,
            xds_host=router_host,
            xds_port=router_port,
            log_path=self.envoy_log,
            tls=self.cfg.tls.files(ENVOY),
            max_connections=self.cfg.envoy.max_connections,
            max_heap_bytes=self.cfg.envoy.max_heap_mb * 1024 * 1024,
        )
        return self.envoy

    def _supervise(
        self,
        name: str,
        kind: str,
        proc: Process,
        start: Callable[[], Any],
        timeout: float,
        *,
        ready: Callable[[Process], None] | None = None,
        log_path: Path | None = None,
    ) -> None:
        def wait_ready(p: Process) -> None:
            assert isinstance(p, procs.ServiceProcess)
            p.wait_ready(timeout=timeout)

        assert self.supervisor is not None
        self.supervisor.add(
            Child(
                name=name,
                kind=kind,
                proc=proc,
                start=start,
                wait_ready=ready or wait_ready,
                log_path=str(log_path or getattr(proc, "log_path", None) or ""),
                started_at=getattr(proc, "started_at", time.time()),
            )
        )

    def write_state(self) -> None:
        """What every process is doing, for `switchyard status` (atomically replaced)."""
        if self.state_file is None or self.supervisor is None:
            return
        state = {
            "pid": os.getpid(),
            "router": self.router_address if self.cfg else "",
            "endpoint": self.endpoint if self.cfg else "",
            "updated": time.time(),
            "processes": [c.describe() for c in self.supervisor.children()],
        }
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        write_ready_file(self.state_file, state)

    def write_metrics_targets(self, path: Path) -> None:
        """Every /metrics endpoint as a Prometheus file_sd target list."""
        assert self.cfg is not None
        groups: list[dict[str, Any]] = []

        def add(proc: procs.ServiceProcess | None, job: str, **labels: str) -> None:
            if proc is not None and proc.ready.get("metrics_port"):
                target = f"127.0.0.1:{proc.ready['metrics_port']}"
                groups.append({"targets": [target], "labels": {"job": job, **labels}})

        add(self.router, "switchyard-router")
        add(self.safety, "switchyard-safety")
        for e in self.engines:
            add(e, "switchyard-engine", pool=e.ready["pool"], engine=e.ready["engine_id"])
        _, admin_port = host_port(self.cfg.envoy.admin)
        groups.append(
            {
                "targets": [f"127.0.0.1:{admin_port}"],
                "labels": {"job": "envoy", "__metrics_path__": "/stats/prometheus"},
            }
        )
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups, indent=2))
        tmp.replace(path)  # Prometheus never reads a half-written file

    def wait_routable(self, timeout: float) -> None:
        """Until Envoy has a healthy endpoint for every running engine."""
        want = {e.address for e in self.engines if e.proc.poll() is None}
        deadline = time.monotonic() + timeout
        while True:
            healthy = self.envoy_healthy_endpoints()
            if want <= healthy:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Envoy has no healthy endpoint for {sorted(want - healthy)}")
            time.sleep(0.2)

    def envoy_healthy_endpoints(self) -> set[str]:
        url = f"{self.envoy_admin}/clusters?format=json"
        data = json.loads(urllib.request.urlopen(url, timeout=5).read())
        out = set()
        for cluster in data.get("cluster_statuses", []):
            for host in cluster.get("host_statuses", []):
                sock = host["address"].get("socket_address")
                if sock is None:  # the admin proxy's Unix socket
                    continue
                flags = host.get("health_status", {})
                if flags.get("eds_health_status") == "HEALTHY" and not flags.get(
                    "failed_active_health_check"
                ):
                    out.add(f"{sock['address']}:{sock['port_value']}")
        return out

    # -- engines the autoscaler adds and removes (services/mesh/scaler.py) ------------------

    def pool_of(self, engine: str) -> str:
        return self._engine_pool.get(engine, "")

    def add_engine(self, pool: str) -> tuple[str, Callable[[], procs.EngineProcess]]:
        """A new engine's name and starter for `pool`, from its first engine group."""
        assert self.cfg is not None
        (p,) = [x for x in self.cfg.pools if x.name == pool]
        if not p.engines:
            raise ValueError(f"pool {pool} has no engine group to start engines from")
        group = p.engines[0]
        taken = {n for n, q in self._engine_pool.items() if q == pool}
        index = len(taken)
        while f"{pool}-{index}" in taken:
            index += 1
        name = f"{pool}-{index}"
        self._engine_pool[name] = pool
        return name, self._engine_starter(name, pool, group.config, group.version)

    def supervise_engine(self, name: str, starter: Callable[[], procs.EngineProcess]) -> None:
        """Start a new engine, wait until it serves, then supervise it like the others."""
        engine = starter()
        self.engines.append(engine)
        engine.wait_ready(timeout=self._engine_timeout, on_progress=self.say)
        self._supervise(name, "engine", engine, starter, self._engine_timeout)

    def retire_engine(self, engine: procs.EngineProcess) -> None:
        """Stop an engine on purpose: SIGTERM is its drain (no new turns, its own finish,
        then it exits); the supervisor leaves it down."""
        if self.supervisor is not None:
            self.supervisor.retire(engine.name)
        engine.terminate()

    def forget_engine(self, engine: procs.EngineProcess) -> None:
        """A retired engine that has exited: no longer one of the mesh's."""
        engine.stop()
        if engine in self.engines:
            self.engines.remove(engine)

    def stop(self) -> None:
        if self.scaler is not None:
            self.scaler.stop()
        if self.supervisor is not None:
            self.supervisor.stop()  # nothing comes back from here on
        if self.envoy is not None and self.envoy.poll() is None:
            if self.tracing_enabled:
                time.sleep(1.2)  # Envoy exports its spans every second (envoy/bootstrap.yaml)
            self.envoy.terminate()
            try:
                self.envoy.wait(10)
            except subprocess.TimeoutExpired:
                self.envoy.kill()
        for engine in list(self.engines):
            engine.terminate()
        for engine in list(self.engines):
            engine.stop()
        if self.router is not None:
            self.router.stop()
        if self.safety is not None:
            self.safety.stop()
        if self.sink is not None:
            self.sink.stop()
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)
        self.say("[up] stopped")
