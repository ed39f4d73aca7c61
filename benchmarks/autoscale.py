"""The autoscaler on the local mesh: a load ramp up then down, with and without it.

Two meshes as `switchyard up` runs them (safety filter and tracing on), one after the other, each
with the default mesh's small-model pool (deploy/local/engine-small.yaml, one engine to start):

- `autoscaled`: `autoscale.pools: {l4-small: 1..2}` — `up` starts a second engine when the
  router's signal asks for it and drains it when idle;
- `fixed`: the minimum size, one engine throughout.

The same ramp on each: `--base` concurrent clients, then `--peak` for `--hold` seconds, then
`--base` again for `--tail` seconds, then nothing until the pool is back to its minimum (at most
`--settle` seconds). Each client sends one turn after another (`--tokens` tokens, a distinct
prompt each). The router's status is polled twice a second for the pool's desired and serving
engines.

Figures per mesh: time from the peak's start to the router asking for a second engine and to
that engine serving; time from the load's end to the pool back at one engine; turns sent,
failed (goal 0), and TTFT p50/p99 during the peak and overall (as the client sees it: first
delta); completion tokens per second during the peak.

    .venv/bin/python benchmarks/autoscale.py [--peak 8] [--hold 180] [--json out.json]

Figures, not pass/fail. On this 2-core machine a second CPU engine shares the cores of the
first (and loading it costs CPU for a minute): read the TTFT comparison with that in mind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import percentile, prompts, say, table, write_json

from services.mesh.client import MeshClient, make_request
from services.mesh.up import Mesh

ROOT = Path(__file__).resolve().parents[1]
POOL = "l4-small"


def config(workdir: Path, name: str, autoscaled: bool, args: argparse.Namespace) -> Path:
    bounds = {"min_engines": 1, "max_engines": 2 if autoscaled else 1}
    cfg = {
        "router": {"listen": "127.0.0.1:0"},
        "envoy": {"node_id": f"switchyard-bench-{name}", "ext_proc_timeout_seconds": 5},
        "saturation": {"capacity": {"cpu": args.capacity}},
        "flow": {"max_queue": 256, "max_wait_seconds": 25},
        "autoscale": {
            "queue_up": args.queue_up,
            "queue_down": 1,
            "utilization_down": 0.5,
            "down_stabilization_seconds": args.down_window,
            "pools": {POOL: bounds},
        },
        "default_model": "small",
        "pools": [
            {
                "name": POOL,
                "accelerator": "cpu",
                "models": [{"name": "small", "tokenizer": "${SWITCHYARD_MODELS}/small"}],
                "engines": [
                    {"config": str(ROOT / "deploy" / "local" / "engine-small.yaml"), "count": 1}
                ],
            }
        ],
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@dataclass
class Run:
    t0: float = 0.0
    turns: list[dict[str, Any]] = field(default_factory=list)  # start, ttft, tokens, error
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # t, serving, desired


async def watch(mesh: Mesh, run: Run, stop: asyncio.Event) -> None:
    from services.common.tls import channel
    from switchyard.v1 import router_pb2, router_pb2_grpc

    async with channel(mesh.router_address, mesh.operator_tls()) as ch:
        admin = router_pb2_grpc.AdminStub(ch)
        while not stop.is_set():
            try:
                status = await admin.Status(router_pb2.StatusRequest(), timeout=5)
                (pool,) = [p for p in status.pools if p.name == POOL]
                serving = sum(e.state == "serving" for e in pool.engines)
                run.timeline.append((time.monotonic() - run.t0, serving, pool.desired_engines))
            except Exception as e:  # a missed sample is not a failed turn
                say(f"[bench] status: {e}")
            await asyncio.sleep(0.5)


async def client_loop(
    client: MeshClient, run: Run, texts: list[str], tokens: int, until: float, cid: int
) -> None:
    i = 0
    while time.monotonic() < until:
        prompt = f"[{cid} {i} {time.time_ns()}] {texts[(cid * 7919 + i) % len(texts)]}"
        i += 1
        start = time.monotonic()
        row: dict[str, Any] = {"start": start - run.t0, "ttft": None, "tokens": 0, "error": ""}
        try:
            async for msg in client.stream(make_request(prompt, model="small", max_tokens=tokens)):
                if row["ttft"] is None and msg.HasField("delta"):
                    row["ttft"] = time.monotonic() - start
                if msg.HasField("final"):
                    row["tokens"] = msg.final.usage.completion_tokens
        except Exception as e:  # counted, reported
            detail = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
            row["error"] = f"{type(e).__name__}: {detail}"
        row["end"] = time.monotonic() - run.t0
        run.turns.append(row)


async def ramp(mesh: Mesh, args: argparse.Namespace) -> tuple[Run, dict[str, float]]:
    run = Run(t0=time.monotonic())
    texts = prompts(64, args.words, seed=3)
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(mesh, run, stop))
    marks: dict[str, float] = {}
    async with MeshClient.connect(mesh.endpoint, key=mesh.dev_key) as client:
        now = lambda: time.monotonic() - run.t0  # noqa: E731
        say(f"[bench] base load: {args.base} clients for {args.lead:g}s ...")
        marks["peak_start"] = args.lead
        marks["peak_end"] = args.lead + args.hold
        marks["load_end"] = marks["peak_end"] + args.tail
        base = [
            asyncio.create_task(
                client_loop(client, run, texts, args.tokens, run.t0 + marks["load_end"], c)
            )
            for c in range(args.base)
        ]
        await asyncio.sleep(args.lead)
        say(f"[bench] peak: {args.peak} clients for {args.hold:g}s ...")
        peak = [
            asyncio.create_task(
                client_loop(client, run, texts, args.tokens, run.t0 + marks["peak_end"], c)
            )
            for c in range(args.base, args.peak)
        ]
        await asyncio.gather(*peak)
        say(f"[bench] back to {args.base} clients for {args.tail:g}s ...")
        await asyncio.gather(*base)
        marks["load_end"] = now()
        say(f"[bench] idle: waiting up to {args.settle:g}s for the pool's minimum ...")
        deadline = time.monotonic() + args.settle
        while time.monotonic() < deadline:
            if run.timeline and run.timeline[-1][0] > marks["load_end"] + 1:
                serving, desired = run.timeline[-1][1:]
                if serving <= 1 and desired <= 1 and any(s > 1 for _, s, _ in run.timeline):
                    break
                if not any(s > 1 for _, s, _ in run.timeline):
                    break  # never scaled (the fixed mesh): nothing to wait for
            await asyncio.sleep(0.5)
    stop.set()
    await watcher
    return run, marks


def first_after(timeline: list[tuple[float, int, int]], since: float, test: Any) -> float | None:
    for t, serving, desired in timeline:
        if t >= since and test(serving, desired):
            return t - since
    return None


def summarize(run: Run, marks: dict[str, float], late: float | None) -> dict[str, Any]:
    """`late`: when (since the start) the autoscaled mesh's second engine served; the turns of
    the peak started after it are compared too (the same window of the same schedule on both)."""
    ok = [r for r in run.turns if not r["error"]]
    in_peak = [r for r in ok if marks["peak_start"] <= r["start"] < marks["peak_end"]]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    peak_ttft = [r["ttft"] for r in in_peak if r["ttft"] is not None]
    late_ttft = [
        r["ttft"]
        for r in in_peak
        if late is not None and r["start"] >= late and r["ttft"] is not None
    ]
    peak_tokens = sum(
        r["tokens"] for r in ok if marks["peak_start"] <= r["end"] < marks["peak_end"]
    )
    tl = run.timeline
    scaled = any(s > 1 for _, s, _ in tl)
    return {
        "turns": len(run.turns),
        "failed": len(run.turns) - len(ok),
        "errors": sorted({r["error"] for r in run.turns if r["error"]})[:5],
        "ttft_p50_ms": percentile(ttft, 50) * 1000,
        "ttft_p99_ms": percentile(ttft, 99) * 1000,
        "peak_ttft_p50_ms": percentile(peak_ttft, 50) * 1000,
        "peak_ttft_p99_ms": percentile(peak_ttft, 99) * 1000,
        "late_peak_turns": len(late_ttft),
        "late_peak_ttft_p50_ms": percentile(late_ttft, 50) * 1000,
        "late_peak_ttft_p99_ms": percentile(late_ttft, 99) * 1000,
        "peak_tokens_per_s": peak_tokens / (marks["peak_end"] - marks["peak_start"]),
        "asked_up_s": first_after(tl, marks["peak_start"], lambda s, d: d > 1),
        "serving_up_s": first_after(tl, marks["peak_start"], lambda s, d: s > 1),
        "down_s": (
            first_after(tl, marks["load_end"], lambda s, d: s <= 1 and d <= 1) if scaled else None
        ),
        "max_serving": max((s for _, s, _ in tl), default=0),
    }


async def main_async(args: argparse.Namespace) -> int:
    from services.mesh.models import default_models_dir, init_models

    models = default_models_dir()
    init_models(models, ["small"], progress=lambda m: say(f"[models] {m}"))
    os.environ["SWITCHYARD_MODELS"] = str(models)
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-bench-autoscale-"))
    runs: dict[str, tuple[Run, dict[str, float]]] = {}
    try:
        for name, autoscaled in (("autoscaled", True), ("fixed", False)):
            mesh = Mesh(
                config(workdir, name, autoscaled, args),
                workdir=workdir / name,
                free_ports=True,
                say=say,
                traces_dir=workdir / name / "traces",
            )
            try:
                say(f"[bench] starting the {name} mesh ...")
                mesh.start()
                runs[name] = await ramp(mesh, args)
            finally:
                mesh.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    run, marks = runs["autoscaled"]
    up = first_after(run.timeline, marks["peak_start"], lambda s, d: s > 1)
    late = None if up is None else marks["peak_start"] + up
    results = {name: summarize(run, marks, late) for name, (run, marks) in runs.items()}
    for name, r in results.items():
        say(f"[bench] {name}: {r}")

    def secs(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f}"

    print(
        f"\nAutoscaling: pool {POOL} (1..2 engines vs fixed 1), {args.base} → {args.peak} → "
        f"{args.base} clients ({args.hold:g}s peak), {args.tokens} tokens per turn\n"
    )
    print(
        table(
            [
                "mesh",
                "asked +1 (s)",
                "2nd serving (s)",
                "back to 1 (s)",
                "turns",
                "failed",
                "peak TTFT p50 ms",
                "peak TTFT p99 ms",
                "TTFT p99 ms",
                "2 serving: TTFT p50/p99 ms",
                "peak tok/s",
            ],
            [
                [
                    name,
                    secs(r["asked_up_s"]),
                    secs(r["serving_up_s"]),
                    secs(r["down_s"]),
                    r["turns"],
                    r["failed"],
                    r["peak_ttft_p50_ms"],
                    r["peak_ttft_p99_ms"],
                    r["ttft_p99_ms"],
                    f"{r['late_peak_ttft_p50_ms']:.0f} / {r['late_peak_ttft_p99_ms']:.0f}",
                    r["peak_tokens_per_s"],
                ]
                for name, r in results.items()
            ],
        )
    )
    a, f = results["autoscaled"], results["fixed"]
    print(
        "\n'2 serving': the peak's turns started once the autoscaled mesh's second engine served "
        f"({a['late_peak_turns']} and {f['late_peak_turns']} turns), the same window on both."
    )
    print(
        f"peak TTFT p99 autoscaled/fixed: {a['peak_ttft_p99_ms'] / f['peak_ttft_p99_ms']:.2f}; "
        f"2 serving: {a['late_peak_ttft_p99_ms'] / f['late_peak_ttft_p99_ms']:.2f}; "
        f"peak tokens/s autoscaled/fixed: "
        f"{a['peak_tokens_per_s'] / max(f['peak_tokens_per_s'], 1e-9):.2f}"
    )
    write_json(args.json, {"args": vars(args), "results": results})
    return 0 if a["failed"] == 0 and f["failed"] == 0 else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", type=int, default=1, help="clients before and after the peak")
    p.add_argument("--peak", type=int, default=8, help="clients during the peak")
    p.add_argument("--lead", type=float, default=15, help="seconds of base load first")
    p.add_argument("--hold", type=float, default=180, help="seconds of peak load")
    p.add_argument("--tail", type=float, default=15, help="seconds of base load after the peak")
    p.add_argument("--settle", type=float, default=180, help="longest wait for the scale-down")
    p.add_argument("--tokens", type=int, default=48, help="max_tokens per turn")
    p.add_argument("--words", type=int, default=24, help="words per prompt")
    p.add_argument("--capacity", type=int, default=2, help="turns one CPU engine takes at once")
    p.add_argument("--queue-up", type=int, default=2, help="autoscale.queue_up")
    p.add_argument("--down-window", type=float, default=20, help="down_stabilization_seconds")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args()
    if not 0 < args.base < args.peak:
        p.error("need 0 < --base < --peak")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
