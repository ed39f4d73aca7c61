"""The mesh under faults: steady load while processes are killed and frozen, and what it cost.

The default mesh as `switchyard up` runs it (deploy/local/pools.yaml: safety, router with xDS,
a large engine and two small ones, Envoy; supervised, tracing to a local sink) takes a steady
load of C clients (MeshClient, which resumes a broken turn) on the small pool, while a schedule
of faults runs, one at a time, each after the mesh is whole again:

  engine-kill    SIGKILL a small engine (the supervisor restarts it; its streams resume)
  engine-stop    SIGSTOP the other small engine for 10 s, then SIGCONT
  safety-kill    SIGKILL the safety filter (turns fail closed until it is back)
  router-stop    SIGSTOP the router for 5 s, then SIGCONT (new turns fail fast meanwhile)

Per fault: the turns in flight at any moment from the fault until the mesh was whole again
(attempted, succeeded, resumed mid-stream, failed), whether a healthy path existed for the
failed ones (a small engine stayed up during the engine faults; none exists while the safety
filter or the router is down: the mesh fails closed), and the seconds from the end of the fault
(the SIGCONT, or for a kill the moment the restarted process serves again; its restart time is
shown apart) until routing was whole again: every engine serving in the router, healthy in
Envoy, and every process running.

    .venv/bin/python benchmarks/faults.py [--clients 6] [--quiet 15] [--json out.json]

Figures, not pass/fail. Goal: 0 failed turns while a healthy engine existed for them, every
mid-stream engine death resumed, routing whole again ≤ 5 s after the fault ends (an engine
that was killed needs its model loaded again first: that time is shown apart).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORDS, say, table, write_json

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Turn:
    started: float
    ended: float = 0.0
    ok: bool = False
    resumed: int = 0
    engine: str = ""
    error: str = ""


@dataclass
class Fault:
    name: str
    target: str  # the process (supervised child) it hits
    freeze: float  # 0: SIGKILL; else SIGSTOP for this many seconds, then SIGCONT
    healthy_path: bool  # whether a healthy path to an engine existed during it
    began: float = 0.0
    ended: float = 0.0  # the kill, or the SIGCONT
    whole: float = 0.0  # routing whole again
    restarted_in: float = 0.0  # for kills: until the process served again
    turns: list[Turn] = field(default_factory=list)

    @property
    def what(self) -> str:
        if self.freeze:
            return f"SIGSTOP {self.target} for {self.freeze:g} s, then SIGCONT"
        return f"SIGKILL {self.target} (the supervisor restarts it)"


async def routing_whole(mesh: Any) -> bool:
    """Every engine serving in the router, healthy in Envoy, every process running."""
    import grpc

    from services.common.tls import channel as tls_channel
    from switchyard.v1 import router_pb2, router_pb2_grpc

    if any(c.state != "running" for c in mesh.supervisor.children()):
        return False
    try:
        async with tls_channel(mesh.router_address, mesh.operator_tls()) as ch:
            st = await router_pb2_grpc.AdminStub(ch).Status(router_pb2.StatusRequest(), timeout=2)
    except grpc.aio.AioRpcError:
        return False
    engines = [e for p in st.pools for e in p.engines]
    if len(engines) != len(mesh.engines) or any(e.state != "serving" for e in engines):
        return False
    try:
        healthy = await asyncio.to_thread(mesh.envoy_healthy_endpoints)
    except OSError:
        return False
    return {e.endpoint for e in engines} <= healthy


async def wait_whole(mesh: Any, timeout: float = 600.0) -> float:
    deadline = time.monotonic() + timeout
    while not await routing_whole(mesh):
        if time.monotonic() > deadline:
            raise TimeoutError("the mesh did not become whole again")
        await asyncio.sleep(0.1)
    return time.monotonic()


async def client_loop(mesh: Any, turns: list[Turn], stop: asyncio.Event, n: int) -> None:
    import grpc

    from services.mesh.client import MeshClient, make_request

    i = 0
    async with MeshClient.connect(mesh.endpoint, key=mesh.dev_key) as client:
        while not stop.is_set():
            i += 1
            text = f"client {n} turn {i}: " + " ".join(
                WORDS[(n + j) % len(WORDS)] for j in range(64)
            )
            t = Turn(time.monotonic())
            turns.append(t)
            try:
                reply = await client.generate(
                    make_request(text, max_tokens=48, ignore_eos=True, temperature=0.0),
                    timeout=120,
                )
                assert reply.final is not None
                t.ok, t.resumed, t.engine = True, reply.final.resumed, reply.final.served_by.engine
            except grpc.aio.AioRpcError as e:
                t.error = f"{e.code().name}: {e.details()[:120]}"
                await asyncio.sleep(0.2)  # as a client would before its next turn
            t.ended = time.monotonic()


async def until(condition: Any) -> None:
    """Poll `condition()` (the supervisor's state, read from its thread) every 0.1 s."""
    while not condition():  # noqa: ASYNC110 (no event to wait on: another thread's state)
        await asyncio.sleep(0.1)


async def run_fault(mesh: Any, fault: Fault, quiet: float) -> None:
    c = mesh.supervisor.child(fault.target)
    say(f"[bench] fault {fault.name}: {fault.what}")
    fault.began = time.monotonic()
    if fault.freeze:
        os.kill(c.proc.pid, signal.SIGSTOP)
        await asyncio.sleep(fault.freeze)
        os.kill(c.proc.pid, signal.SIGCONT)
        fault.ended = time.monotonic()
    else:
        restarts = c.restarts
        os.kill(c.proc.pid, signal.SIGKILL)
        fault.ended = time.monotonic()
        await until(lambda: c.restarts > restarts and c.state == "running")
        fault.restarted_in = time.monotonic() - fault.ended
    fault.whole = await wait_whole(mesh)
    say(f"[bench]   whole again {fault.whole - fault.ended:.2f} s after the fault ended")
    await asyncio.sleep(quiet)


FAULTS = [  # (name, target, freeze seconds or 0 for SIGKILL, a healthy engine stays reachable)
    ("engine-kill", "l4-small-0", 0.0, True),
    ("engine-stop", "l4-small-1", 10.0, True),
    ("safety-kill", "safety", 0.0, False),
    ("router-stop", "router", 5.0, False),
]


async def main_async(args: argparse.Namespace) -> int:
    from services.mesh.models import default_models_dir, init_models
    from services.mesh.up import Mesh

    models = default_models_dir()
    init_models(models, progress=lambda m: say(f"[models] {m}"))
    os.environ["SWITCHYARD_MODELS"] = str(models)
    root = Path(tempfile.mkdtemp(prefix="switchyard-bench-faults-"))
    mesh = Mesh(
        args.config,
        workdir=root / "mesh",
        free_ports=True,
        say=say,
        traces_dir=root / "traces",
        state_file=root / "up-state.json",
    )
    faults = [Fault(*spec) for spec in FAULTS]
    turns: list[Turn] = []
    try:
        say("[bench] starting the default mesh (as `switchyard up` runs it) ...")
        mesh.start()
        stop = asyncio.Event()
        clients = [
            asyncio.create_task(client_loop(mesh, turns, stop, n)) for n in range(args.clients)
        ]
        say(f"[bench] {args.clients} clients; steady load for {args.quiet:g} s first")
        await asyncio.sleep(args.quiet)
        steady_until = time.monotonic()
        for fault in faults:
            await run_fault(mesh, fault, args.quiet)
        stop.set()
        await asyncio.gather(*clients)
    finally:
        mesh.stop()

    for t in turns:  # a fault's turns: those in flight at any moment from it to whole again
        for f in faults:
            if t.started <= f.whole and t.ended >= f.began:
                f.turns.append(t)
    steady = [t for t in turns if t.started < steady_until]
    rows: list[list[Any]] = []
    results: dict[str, Any] = {"clients": args.clients, "cpus": os.cpu_count(), "faults": []}
    failures_with_path = 0
    unresumed = 0
    for f in faults:
        ok = sum(t.ok for t in f.turns)
        resumed = sum(t.ok and t.resumed > 0 for t in f.turns)
        failed = [t for t in f.turns if not t.ok]
        with_path = len(failed) if f.healthy_path else 0
        failures_with_path += with_path
        if f.name == "engine-kill":
            unresumed += sum(1 for t in failed if "RST_STREAM" in t.error or "INTERNAL" in t.error)
        # A killed process must load again first (its restart time is shown apart): whole again
        # counts from when it serves again.
        whole = f.whole - f.ended - f.restarted_in
        rows.append(
            [
                f.name,
                len(f.turns),
                ok,
                resumed,
                len(failed),
                with_path,
                f"{whole:.2f}",
                f"{f.restarted_in:.1f}" if f.restarted_in else "-",
            ]
        )
        reasons = Counter(t.error.split(" (")[0] for t in failed)
        results["faults"].append(
            {
                "name": f.name,
                "what": f.what,
                "attempted": len(f.turns),
                "succeeded": ok,
                "resumed": resumed,
                "failed": len(failed),
                "failed_with_a_healthy_path": with_path,
                "whole_again_s": whole,
                "restarted_in_s": f.restarted_in,
                "failure_reasons": dict(reasons),
            }
        )
    steady_ok = [t.ended - t.started for t in steady if t.ok]
    results["steady"] = {
        "turns": len(steady),
        "failed": sum(not t.ok for t in steady),
        "turn_seconds_p50": statistics.median(steady_ok) if steady_ok else float("nan"),
    }
    results["total_turns"] = len(turns)
    results["served_by"] = dict(Counter(t.engine for t in turns if t.ok))
    print(
        f"\nfaults under steady load: {args.clients} clients on the small pool (64-word prompts, "
        f"48 tokens), default mesh, {os.cpu_count()} cores\n"
    )
    served = ", ".join(f"{k} {v}" for k, v in sorted(results["served_by"].items()))
    print(f"{len(turns)} turns in all; served by: {served}\n")
    print(
        table(
            [
                "fault",
                "attempted",
                "succeeded",
                "resumed",
                "failed",
                "failed with a healthy engine",
                "whole again (s)",
                "restart (s)",
            ],
            rows,
        )
    )
    for f, r in zip(faults, results["faults"], strict=True):
        if r["failure_reasons"]:
            print(
                f"  {f.name} failures: "
                + "; ".join(f"{k} x{v}" for k, v in r["failure_reasons"].items())
            )
    whole_ok = all(r["whole_again_s"] <= 5.0 for r in results["faults"])
    print(
        f"\ngoal: 0 failed turns while a healthy engine existed ({failures_with_path}), every "
        f"mid-stream engine death resumed ({unresumed} not), routing whole <= 5 s after each "
        f"fault ended ({'yes' if whole_ok else 'no'}): "
        f"{'met' if not failures_with_path and not unresumed and whole_ok else 'NOT met'}"
    )
    write_json(args.json, results)
    if args.keep:
        say(f"[bench] mesh logs kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config",
        type=Path,
        default=ROOT / "deploy" / "local" / "pools.yaml",
        help="mesh config (default: the one `switchyard up` runs)",
    )
    p.add_argument("--clients", type=int, default=6, help="concurrent clients")
    p.add_argument(
        "--quiet", type=float, default=15.0, help="seconds of steady load between faults"
    )
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the mesh logs")
    args = p.parse_args()
    if args.clients < 1 or args.quiet < 0:
        p.error("--clients must be positive and --quiet not negative")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
