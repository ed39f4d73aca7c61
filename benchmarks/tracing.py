"""What tracing costs: TTFT and turns/s through the whole mesh with tracing on (sampling 1.0,
every span exported over OTLP/gRPC) against the same mesh with tracing off, side by side.

Two meshes from one config (one pool, one small engine, safety on), both up at once:
  A  tracing on, sampling 1.0, exporting to an OTLP/gRPC sink run by this benchmark
  B  tracing off (no tracer in any service, none in Envoy)
Then, alternately, so that both see the same machine:
1. TTFT: sequential 4-token turns, A/B then B/A, the same prompt to both (separate engines, so
   no shared prefix cache), timed by the client to the first delta through Envoy; the engine's
   own TTFT (from the Final) beside it, to tell engine time from mesh time.
2. turns/s: a closed loop of C concurrent 8-token turns for T seconds against A, then B, then
   A, then B ...; the median of each mesh's blocks.
The sink's spans are counted afterwards: every turn sent to A must have its
`switchyard.engine.generate` span and a trace id in its reply, and no turn to B may have one;
otherwise the figures are reported as invalid (exit status 1).

The mesh started first is also measured first; `--first off` reverses both, to check that a
difference follows tracing and not the order (both vLLM engines share this machine's cores,
and each busy-waits after its steps).

    .venv/bin/python benchmarks/tracing.py [--turns 60] [--concurrency 8] [--seconds 15]
        [--rounds 2] [--first on|off] [--keep] [--json out.json]

Figures, not pass/fail. Goal: tracing changes TTFT and turns/s by ≤ 5% either way.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORDS, percentile, say, table, write_json

HERE = Path(__file__).resolve().parent
GOAL_PCT = 5.0
GENERATE_SPAN = "switchyard.engine.generate"


@dataclass
class Tally:
    """What one mesh was sent, and what came back."""

    sent: int = 0
    ok: int = 0
    errors: int = 0
    traced: int = 0  # replies carrying a trace id
    ttft: list[float] = field(default_factory=list)  # seconds, measured turns only
    engine_ttft: list[float] = field(default_factory=list)  # the engine's own (Final), seconds
    trace_ids: list[str] = field(default_factory=list)  # of the measured turns
    rates: list[float] = field(default_factory=list)  # turns/s, one per block


class Prompts:
    """Distinct prompts per mesh: the n-th prompt is the same text for every mesh."""

    def __init__(self, words: int) -> None:
        self.body = " ".join(WORDS[i % len(WORDS)] for i in range(words))
        self.next = collections.Counter[str]()

    def take(self, mesh: str) -> str:
        self.next[mesh] += 1
        return f"{self.next[mesh]} {self.body}"  # distinct first token: no shared prefix


async def turn(
    stub: Any, tally: Tally, text: str, max_tokens: int, *, record: bool = False
) -> None:
    """One whole turn; with `record`, its TTFT (to the first delta; NaN when it failed)."""
    import grpc

    from services.mesh.client import Reply, make_request

    req = make_request(text, max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    tally.sent += 1
    start = time.perf_counter()
    ttft = engine_ttft = float("nan")
    trace_id = ""
    try:
        reply = Reply()
        async for msg in stub.stream(req, timeout=120, reply=reply):
            if msg.HasField("delta"):
                if ttft != ttft:
                    ttft = time.perf_counter() - start
            elif msg.HasField("final"):
                engine_ttft = msg.final.timing.ttft.ToNanoseconds() / 1e9
        trace_id = reply.trace_id
        tally.ok += 1
        tally.traced += bool(trace_id)
    except grpc.aio.AioRpcError as e:
        tally.errors += 1
        if tally.errors <= 3:
            say(f"[bench] turn failed: {e.code().name} {e.details()}")
    if record:
        tally.ttft.append(ttft)
        tally.engine_ttft.append(engine_ttft)
        tally.trace_ids.append(trace_id)


async def measure_ttft(
    order: tuple[str, str],
    stubs: dict[str, Any],
    tallies: dict[str, Tally],
    prompts: Prompts,
    turns: int,
) -> None:
    for _ in range(5):  # warm both paths
        for name in order:
            await turn(stubs[name], tallies[name], prompts.take(name), 4)
    for i in range(turns):
        for name in order if i % 2 == 0 else order[::-1]:
            await turn(stubs[name], tallies[name], prompts.take(name), 4, record=True)


async def closed_loop(
    stub: Any, tally: Tally, prompts: Prompts, name: str, concurrency: int, seconds: float
) -> float:
    """Turns/s of `concurrency` clients, each sending its next turn when the last one ends."""
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            await turn(stub, tally, prompts.take(name), 8)

    ok_before = tally.ok
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return (tally.ok - ok_before) / (time.perf_counter() - start)


async def measure_rate(
    order: tuple[str, str],
    stubs: dict[str, Any],
    tallies: dict[str, Tally],
    prompts: Prompts,
    concurrency: int,
    seconds: float,
    rounds: int,
) -> None:
    for name in order:  # warm both at this concurrency
        await closed_loop(stubs[name], tallies[name], prompts, name, concurrency, 1.0)
    for r in range(rounds):
        for name in order:
            rate = await closed_loop(
                stubs[name], tallies[name], prompts, name, concurrency, seconds
            )
            tallies[name].rates.append(rate)
            say(f"[bench] round {r + 1}/{rounds}: tracing {name}: {rate:.2f} turns/s")


def span_counts(path: Path) -> collections.Counter[tuple[str, str]]:
    """(service, span name) -> spans the sink received."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                s = json.loads(line)
                counts[(s["service"], s["name"])] += 1
    return counts


def wait_for_spans(path: Path, want: int, timeout: float = 20.0) -> collections.Counter[Any]:
    """The sink's counts once `want` generate spans are in, or once nothing arrives for 5 s."""
    deadline = time.monotonic() + timeout
    last, still_since = -1, time.monotonic()
    while True:
        counts = span_counts(path)
        n = sum(v for (_, name), v in counts.items() if name == GENERATE_SPAN)
        if n != last:
            last, still_since = n, time.monotonic()
        if n >= want or time.monotonic() - still_since > 5 or time.monotonic() > deadline:
            time.sleep(1.0)  # Envoy's and the router's spans may trail the engine's by a batch
            return span_counts(path)
        time.sleep(0.5)


def pct(on: float, off: float) -> float:
    return (on / off - 1.0) * 100.0 if off else float("nan")


async def main_async(args: argparse.Namespace) -> int:
    from services.mesh.client import MeshClient, bearer, channel
    from services.mesh.models import default_models_dir, init_models
    from services.mesh.otlp_sink import OtlpFileSink
    from services.mesh.up import Mesh

    models = default_models_dir()
    init_models(models, ["small"], progress=lambda m: say(f"[models] {m}"))
    os.environ["SWITCHYARD_MODELS"] = str(models)
    root = Path(tempfile.mkdtemp(prefix="switchyard-bench-tracing-"))
    sink = OtlpFileSink(root / "traces").start()
    say(f"[bench] OTLP sink on {sink.endpoint}, writing {sink.path}; mesh logs in {root}")
    meshes = {
        "on": Mesh(
            args.config,
            workdir=root / "mesh-on",
            free_ports=True,
            say=say,
            otlp_endpoint=sink.endpoint,
            tracing_enabled=True,
            trace_sampling=1.0,
        ),
        "off": Mesh(
            args.config, workdir=root / "mesh-off", free_ports=True, say=say, tracing_enabled=False
        ),
    }
    order = (args.first, "off" if args.first == "on" else "on")
    tallies = {name: Tally() for name in order}
    prompts = Prompts(words=64)
    try:
        for name in order:
            say(f"[bench] starting the mesh with tracing {name} ...")
            meshes[name].start()
        async with (
            channel(meshes["on"].endpoint) as ch_on,
            channel(meshes["off"].endpoint) as ch_off,
        ):
            stubs = {
                "on": MeshClient(ch_on, metadata=bearer(meshes["on"].dev_key)),
                "off": MeshClient(ch_off, metadata=bearer(meshes["off"].dev_key)),
            }
            say(f"[bench] TTFT: {args.turns} turns per mesh, alternating ...")
            await measure_ttft(order, stubs, tallies, prompts, args.turns)
            say(
                f"[bench] turns/s: {args.concurrency} clients, {args.rounds} x {args.seconds:g} s "
                "blocks per mesh, alternating ..."
            )
            await measure_rate(
                order, stubs, tallies, prompts, args.concurrency, args.seconds, args.rounds
            )
        on, off = tallies["on"], tallies["off"]
        say(f"[bench] waiting for the spans of mesh A ({on.sent} turns sent) ...")
        spans = wait_for_spans(sink.path, on.sent)
    finally:
        for name in order[::-1]:
            meshes[name].stop()
        sink.stop()

    generate_spans = sum(v for (_, n), v in spans.items() if n == GENERATE_SPAN)
    problems = []
    if not on.ok <= generate_spans <= on.sent:
        problems.append(
            f"{generate_spans} {GENERATE_SPAN} spans for {on.ok} turns answered by mesh A "
            f"({on.sent} sent)"
        )
    if on.traced != on.ok:
        problems.append(f"{on.ok - on.traced} of mesh A's {on.ok} replies carried no trace id")
    if off.traced:
        problems.append(f"{off.traced} of mesh B's {off.ok} replies carried a trace id")
    for name, t in tallies.items():
        if t.errors:
            problems.append(f"{t.errors} of {t.sent} turns to the mesh with tracing {name} failed")

    ttft = {name: {q: percentile(t.ttft, q) * 1e3 for q in (50, 90)} for name, t in tallies.items()}
    engine_p50 = {name: percentile(t.engine_ttft, 50) * 1e3 for name, t in tallies.items()}
    rate = {name: statistics.median(t.rates) for name, t in tallies.items()}
    results: dict[str, Any] = {
        "config": str(args.config),
        "turns": args.turns,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "started_first": args.first,
        "cpus": os.cpu_count(),
        "ttft_ms": {f"{name}_p{q}": v for name, d in ttft.items() for q, v in d.items()},
        "turns_per_s": rate,
        "turns_per_s_blocks": {name: t.rates for name, t in tallies.items()},
        "engine_ttft_p50_ms": engine_p50,
        "ttft_p50_change_pct": pct(ttft["on"][50], ttft["off"][50]),
        "ttft_p90_change_pct": pct(ttft["on"][90], ttft["off"][90]),
        "turns_per_s_change_pct": pct(rate["on"], rate["off"]),
        "turns_sent": {name: t.sent for name, t in tallies.items()},
        "ttft_ms_samples": {name: [v * 1e3 for v in t.ttft] for name, t in tallies.items()},
        "engine_ttft_ms_samples": {
            name: [v * 1e3 for v in t.engine_ttft] for name, t in tallies.items()
        },
        "trace_ids": tallies["on"].trace_ids,
        "spans": {f"{svc} {n}": v for (svc, n), v in sorted(spans.items())},
        "valid": not problems,
        "problems": problems,
    }

    print(
        f"\ntracing on (sampling 1.0, OTLP/gRPC export) vs off: {args.turns} TTFT turns per mesh, "
        f"{args.concurrency} clients x {args.rounds} x {args.seconds:g} s blocks per mesh, "
        f"64-word prompts, small model; started first: tracing {args.first}"
    )
    print(
        f"machine: {os.cpu_count()} cores shared by everything (both meshes, Envoy, the sink, "
        "this client); goal: ≤ 5% either way\n"
    )
    rows: list[list[Any]] = []
    for q in (50, 90):
        on_ms, off_ms = ttft["on"][q], ttft["off"][q]
        rows.append([f"TTFT p{q} ms", on_ms, off_ms, on_ms - off_ms, f"{pct(on_ms, off_ms):+.1f}%"])
    on_ms, off_ms = engine_p50["on"], engine_p50["off"]
    rows.append(
        [
            "engine's own TTFT p50 ms",
            on_ms,
            off_ms,
            on_ms - off_ms,
            f"{pct(on_ms, off_ms):+.1f}%",
        ]
    )
    rows.append(
        [
            "turns/s (median of blocks)",
            rate["on"],
            rate["off"],
            rate["on"] - rate["off"],
            f"{pct(rate['on'], rate['off']):+.1f}%",
        ]
    )
    print(table(["", "tracing on", "tracing off", "on - off", "change"], rows))
    met = all(
        abs(results[k]) <= GOAL_PCT
        for k in ("ttft_p50_change_pct", "ttft_p90_change_pct", "turns_per_s_change_pct")
    )
    print(f"\ngoal (≤ {GOAL_PCT:g}% either way): {'met' if met else 'NOT met'}")
    print(
        f"\nspans received from mesh A: {generate_spans} {GENERATE_SPAN} for {on.sent} turns "
        f"sent ({on.traced} replies with a trace id); mesh B: {off.sent} turns, "
        f"{off.traced} with a trace id"
    )
    by_service: collections.Counter[str] = collections.Counter()
    for (svc, _), v in spans.items():
        by_service[svc] += v
    print("all spans by service: " + ", ".join(f"{s} {v}" for s, v in sorted(by_service.items())))
    write_json(args.json, results)
    if problems:
        print("\nINVALID: " + "; ".join(problems))
    if problems or args.keep:
        say(f"[bench] mesh logs and spans kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if problems else 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config", type=Path, default=HERE / "mesh-bench.yaml", help="mesh config (one pool)"
    )
    p.add_argument("--turns", type=int, default=60, help="TTFT samples per mesh")
    p.add_argument("--concurrency", type=int, default=8, help="closed-loop clients")
    p.add_argument("--seconds", type=float, default=15.0, help="length of one turns/s block")
    p.add_argument("--rounds", type=int, default=2, help="turns/s blocks per mesh (A, B, A, B..)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument(
        "--first",
        choices=("on", "off"),
        default="on",
        help="the mesh started (and measured) first; run both ways to see order effects",
    )
    p.add_argument("--keep", action="store_true", help="keep the mesh logs and spans received")
    args = p.parse_args()
    if min(args.turns, args.concurrency, args.rounds) < 1 or args.seconds <= 0:
        p.error("--turns, --concurrency, --rounds and --seconds must be positive")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
