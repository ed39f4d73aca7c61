"""Start and stop Switchyard service processes on this machine (router, engines).

Used by `switchyard up` and `demo`, the integration tests and the benchmarks: each service runs
as its own process (`switchyard router|engine … --ready-file F`), logs to a file, and writes the
ready file once it serves; `wait_ready` relays its `[router …]`/`[engine …]` progress meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml


@dataclass
class ServiceProcess:
    """A `switchyard <service>` child process."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    ready_path: Path
    ready: dict[str, Any] = field(default_factory=dict)
    log_start: int = 0  # where this run's output begins in the (appended) log
    started_at: float = field(default_factory=time.time)

    @property
    def address(self) -> str:
        return str(self.ready["address"])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        """The exit status once the process has ended, else None."""
        return self.proc.poll()

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ready['metrics_port']}/metrics"

    def wait_ready(
        self, timeout: float = 300.0, on_progress: Callable[[str], None] | None = None
    ) -> None:
        """Block until the service serves; relay its progress lines meanwhile."""
        deadline = time.monotonic() + timeout
        with open(self.log_path, "rb") as log:
            log.seek(self.log_start)
            while True:
                _relay(log, on_progress)
                if self.ready_path.exists():
                    self.ready = json.loads(self.ready_path.read_text())
                    _relay(log, on_progress)
                    return
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.proc.returncode} before serving; "
                        f"last log lines:\n{tail(self.log_path)}"
                    )
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(
                        f"{self.name} not ready after {timeout:.0f}s; "
                        f"last log lines:\n{tail(self.log_path)}"
                    )
                time.sleep(0.2)

    def terminate(self) -> None:
        """Ask the service to drain and exit (SIGTERM)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait up to `timeout`, then SIGKILL; always reap the whole process group
        (vLLM's engine-core children outlive a killed parent otherwise)."""
        self.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        self.reap()
        return self.proc.wait() if code is None else code

    def reap(self) -> None:
        """Kill whatever is left in the process's group: vLLM's engine core and its workers
        outlive an engine that was killed (SIGKILL leaves them nobody to stop them)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def _relay(log: IO[bytes], on_progress: Callable[[str], None] | None) -> None:
    for raw in log.readlines():
        line = raw.decode(errors="replace").rstrip()
        if on_progress is not None and line.startswith(("[engine", "[router", "[safety")):
            on_progress(line)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


EngineProcess = ServiceProcess


def start_service(
    args: list[str],
    *,
    name: str,
    workdir: Path,
    env: dict[str, str] | None = None,
    nice: int = 0,
) -> ServiceProcess:
    """Start `switchyard ARGS --ready-file …` in its own process group, logging to
    workdir/NAME.log; `nice` lowers its CPU priority (and its children's) from the first
    instruction.

    The group is stopped as one (an engine's vLLM processes with it), but the process stays in
    our session: Linux's autogroup scheduling (on by default in most distributions) shares the
    CPU between sessions first and applies nice only within one. A service in a session of its
    own would compete as a whole session, so `nice` would not hold an engine back, and on a
    small machine an engine's busy vLLM processes kept the router's and the safety filter's
    event loops waiting on the run queue (see README, "How the mesh heals itself")."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / f"{name}.ready.json"
    ready.unlink(missing_ok=True)
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log:  # a restart appends: the last run's end stays readable
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
        log.flush()
        start = log.tell()
        command = [sys.executable, "-m", "services.mesh.cli", *args, "--ready-file", str(ready)]
        nice_bin = shutil.which("nice") if nice else None
        if nice_bin:  # (exec'd: the process keeps its pid)
            command = [nice_bin, "-n", str(nice), *command]
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            process_group=0,  # not start_new_session: see above
        )
    return ServiceProcess(name, proc, log_path, ready, log_start=start)


def start_engine(
    config: Path | dict[str, Any],
    *,
    name: str,
    workdir: Path | None = None,
    overrides: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    nice: int = 0,
) -> EngineProcess:
    """Start `switchyard engine` for `config` (a YAML path or a config dict); returns at once.

    `overrides` are merged over the config's top level (e.g. {"listen": "127.0.0.1:0"});
    `model_version` among them sets the config's `model.version`."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix=f"switchyard-{name}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if isinstance(config, Path):
        data = yaml.safe_load(config.read_text())
        base = config.parent.resolve()
    else:
        data, base = dict(config), Path.cwd()
    overrides = dict(overrides or {})
    version = overrides.pop("model_version", None)
    data = {**data, **overrides}
    if version:
        data["model"] = {**data["model"], "version": version}
    model_path = Path(str(data["model"]["path"]))
    if "${" not in str(model_path) and not model_path.is_absolute():
        data["model"] = {**data["model"], "path": str((base / model_path).resolve())}
    cfg_path = workdir / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    return start_service(
        ["engine", "--config", str(cfg_path)], name=name, workdir=workdir, env=env, nice=nice
    )
