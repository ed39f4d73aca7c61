"""Fair share under a flood, side by side: the same mesh with the router's flow control on (as
`switchyard up` runs it) and off (every turn straight to vLLM, first come first served).

Meshes from `mesh-bench.yaml`, one small engine each, started together; the phases run on one
mesh at a time (the others idle), on then off:

1. B alone: `--b-turns` turns one after another (64-word prompts, 16 tokens), TTFT of each.
2. B while A floods: A keeps `--flood` streams in flight (200-word prompts, 300 tokens each,
   enough to fill the engine's KV cache, so turns queue somewhere); B as in 1.
3. Two backlogged tenants: A with `--flood` streams, C with half as many, for
   `--seconds`; each tenant's service (input + 2 x output tokens, the VTC paper's measure) over
   time, the gap between them (max |S_A - S_C| over 1-s ticks, and at the end), and the pool's
   total tokens/s (fair share must not throttle the pool: goal ≥ 90 % of off).
Over the three phases, how often the router's and the safety filter's event loops stalled
(a monitor tick more than 0.25 s late, from their loop-lag histograms): every turn they had to
answer meanwhile waited as long.

The fair mesh's pool capacity (`saturation.capacity.cpu`) is set to what this engine sustains
for the workload (`--capacity`, default 8 turns: 8 x ~5 KV blocks of its 64); the rest is as
`up` runs it.

Then the quota path's cost: a router's ext_proc driven by h2load through an Envoy TCP proxy
(as benchmarks/mesh_overhead.py does), for a tenant without quotas, with quotas in the router's
memory, and with quotas in Redis (a third mesh, its ledger in a local redis-server), blocks
alternating. These meshes run without flow control: h2load's exchanges never reach an engine.

    .venv/bin/python benchmarks/fairness.py [--flood 16] [--b-turns 30] [--seconds 40]

Figures, not pass/fail. Goals: B's TTFT p99 while A floods ≤ 1.5 x alone (fair share on); the
service gap stays bounded; tokens/s on ≥ 90 % of off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORDS, percentile, say, table, write_json
from mesh_overhead import check_extproc_answer, extproc_body, extproc_h2load, tcp_proxy

from services.mesh.up import Mesh

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def text(rnd: random.Random, words: int) -> str:
    return f"{rnd.random():.6f} " + " ".join(rnd.choice(WORDS) for _ in range(words))


def config(workdir: Path, name: str, flow: bool, capacity: int, redis_url: str = "") -> Path:
    """mesh-bench.yaml with flow control on or off, the engine's capacity, the ledger."""
    data = yaml.safe_load((HERE / "mesh-bench.yaml").read_text())
    for group in data["pools"][0]["engines"]:
        group["config"] = str((HERE / group["config"]).resolve())
    data["flow"] = {"enabled": flow}
    data["saturation"] = {"capacity": {"cpu": capacity if flow else 10**9}}
    if redis_url:
        data["quotas"] = {"redis_url": redis_url}
    path = workdir / f"mesh-{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def admin_call(mesh: Mesh, method: str, request: Any) -> Any:
    from services.common.tls import channel
    from switchyard.v1 import router_pb2_grpc

    async with channel(mesh.router_address, mesh.operator_tls()) as ch:
        return await getattr(router_pb2_grpc.AdminStub(ch), method)(request, timeout=10)


async def new_key(mesh: Mesh, tenant: str, **quotas: int) -> str:
    from switchyard.v1 import router_pb2

    if quotas:
        await admin_call(
            mesh,
            "SetTenant",
            router_pb2.SetTenantRequest(
                tenant=tenant,
                update=[f"quotas.{k}" for k in quotas],
                policy=router_pb2.TenantPolicy(quotas=router_pb2.Quotas(**quotas)),
            ),
        )
    created = await admin_call(mesh, "CreateKey", router_pb2.CreateKeyRequest(tenant=tenant))
    return str(created.secret)


@dataclass
class Done:
    tenant: str
    at: float  # monotonic time the turn ended
    prompt: int
    completion: int


@dataclass
class Run:
    done: list[Done] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


async def one_turn(client: Any, tenant: str, prompt: str, max_tokens: int, run: Run) -> float:
    """Stream one turn; returns its TTFT (NaN when it failed)."""
    import grpc

    from services.mesh.client import make_request

    start = time.perf_counter()
    ttft = float("nan")
    try:
        req = make_request(prompt, max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
        async for msg in client.stream(req):
            if msg.HasField("delta") and ttft != ttft:
                ttft = time.perf_counter() - start
            if msg.HasField("final"):
                u = msg.final.usage
                run.done.append(Done(tenant, time.monotonic(), u.prompt_tokens,
                                     u.completion_tokens))  # fmt: skip
    except grpc.aio.AioRpcError as e:
        # By status and the start of its message (which hop gave up, and why).
        key = f"{e.code().name}: {(e.details() or '')[:72]}"
        run.errors[key] = run.errors.get(key, 0) + 1
    return ttft


async def flood(client: Any, tenant: str, streams: int, stop: asyncio.Event, run: Run) -> None:
    rnd = random.Random(tenant)

    async def worker() -> None:
        while not stop.is_set():
            await one_turn(client, tenant, text(rnd, 200), 300, run)

    await asyncio.gather(*(worker() for _ in range(streams)))


async def b_turns(client: Any, n: int, run: Run) -> list[float]:
    rnd = random.Random(7)
    out = []
    for _ in range(n):
        out.append(await one_turn(client, "b", text(rnd, 64), 16, run))
        await asyncio.sleep(0.2)
    return out


def ext_proc_stats(mesh: Mesh) -> dict[str, int]:
    """Envoy's counters of its two ext_proc filters that say a turn was lost there (which
    service gave up): message timeouts, failed streams."""
    import urllib.request

    text = urllib.request.urlopen(f"{mesh.envoy_admin}/stats?filter=ext_proc", timeout=5).read()
    out = {}
    for line in text.decode().splitlines():
        name, _, value = line.partition(": ")
        lost = name.endswith(("message_timeouts", "streams_failed"))
        if lost and value.strip().isdigit() and int(value):
            out[name.split("ext_proc.", 1)[1]] = int(value)
    return out


# A monitor tick this much late is a stall: the service's event loop could not run (its own
# work, or the process waiting for a CPU), and every message it had to answer waited with it.
STALL_SECONDS = 0.25
LAG_METRICS = {
    "router": "switchyard_router_event_loop_lag_seconds",
    "safety": "switchyard_safety_event_loop_lag_seconds",
}


def late_ticks(mesh: Mesh) -> dict[str, float]:
    """Per service: its monitor ticks so far that ran more than STALL_SECONDS late."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for service, metric in LAG_METRICS.items():
        url = getattr(mesh, service).metrics_url
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        count = within = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == f"{metric}_count":
                    count = sample.value
                elif sample.name == f"{metric}_bucket" and sample.labels["le"] != "+Inf":
                    if float(sample.labels["le"]) == STALL_SECONDS:
                        within = sample.value
        out[service] = count - within
    return out


async def phases(mesh: Mesh, keys: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    from services.mesh.client import MeshClient

    clients = {t: MeshClient.connect(mesh.endpoint, key=k, resume=None) for t, k in keys.items()}
    late_before = late_ticks(mesh)
    try:
        out: dict[str, Any] = {}
        run = Run()
        out["b_alone"] = await b_turns(clients["b"], args.b_turns, run)
        await asyncio.sleep(2)
        stop = asyncio.Event()
        a = asyncio.create_task(flood(clients["a"], "a", args.flood, stop, run))
        await asyncio.sleep(5)  # the flood fills the engine
        out["b_flood"] = await b_turns(clients["b"], args.b_turns, run)
        stop.set()
        await a
        await asyncio.sleep(2)
        both = Run()
        stop = asyncio.Event()
        started = time.monotonic()
        tasks = [
            asyncio.create_task(flood(clients["a"], "a", args.flood, stop, both)),
            asyncio.create_task(flood(clients["c"], "c", max(1, args.flood // 2), stop, both)),
        ]
        await asyncio.sleep(args.seconds)
        stop.set()
        ended = time.monotonic()
        await asyncio.gather(*tasks)
        out["service"] = service(both, started, ended)
        out["errors"] = {
            k: run.errors.get(k, 0) + both.errors.get(k, 0) for k in {*run.errors, *both.errors}
        }
        out["ext_proc_stats"] = ext_proc_stats(mesh)
        out["stalls"] = {
            service: int(late - late_before[service]) for service, late in late_ticks(mesh).items()
        }
        return out
    finally:
        for c in clients.values():
            await c.close()


def service(run: Run, started: float, ended: float) -> dict[str, Any]:
    """Each tenant's service over time (turns ended by each 1-s tick), and the gap."""
    ticks = int(ended - started)
    totals = {"a": 0.0, "c": 0.0}
    gaps = []
    done = sorted((d for d in run.done if d.at <= ended), key=lambda d: d.at)
    i = 0
    for tick in range(1, ticks + 1):
        while i < len(done) and done[i].at <= started + tick:
            d = done[i]
            totals[d.tenant] += d.prompt + 2 * d.completion
            i += 1
        gaps.append(totals["a"] - totals["c"])
    tokens = sum(d.completion for d in done)
    return {
        "service_a": totals["a"],
        "service_c": totals["c"],
        "max_gap": max((abs(g) for g in gaps), default=0.0),
        "end_gap": gaps[-1] if gaps else 0.0,
        "gaps": gaps,
        "tokens_per_s": tokens / (ended - started),
    }


def start_redis(workdir: Path) -> Any:
    sys.path.insert(0, str(ROOT))
    from tests.redis_server import RedisServer

    return RedisServer.start(workdir)


async def main_async(args: argparse.Namespace) -> int:
    from services.mesh.models import default_models_dir, init_models

    models = default_models_dir()
    init_models(models, ["small"], progress=lambda m: say(f"[models] {m}"))
    os.environ["SWITCHYARD_MODELS"] = str(models)
    if not shutil.which("h2load"):
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-fairness-"))
    redis = start_redis(workdir)
    # The ext_proc cases run on meshes without flow control: h2load's exchanges never reach an
    # engine, and a saturated pool would hold them (capacity is about engines, not the router).
    meshes = {
        "fair": Mesh(config(workdir, "fair", True, args.capacity), free_ports=True, say=say,
                     traces_dir=workdir / "t-fair"),
        "fifo": Mesh(config(workdir, "fifo", False, args.capacity), free_ports=True,
                     say=say, traces_dir=workdir / "t-fifo"),
        "redis": Mesh(config(workdir, "redis", False, args.capacity, redis.url),
                      free_ports=True, say=say, traces_dir=workdir / "t-redis"),
    }  # fmt: skip
    results: dict[str, Any] = {}
    try:
        for name, mesh in meshes.items():
            say(f"[bench] starting the {name} mesh ...")
            mesh.start()
        keys = {}
        for name in ("fair", "fifo"):
            keys[name] = {t: await new_key(meshes[name], f"bench-{t}") for t in ("a", "b", "c")}
        for name in ("fair", "fifo"):  # (one round each; the meshes' engines idle meanwhile)
            say(f"[bench] {name}: B alone, B while A floods, A and C backlogged ...")
            results[name] = await phases(meshes[name], keys[name], args)

        # The quota path's cost on the router's ext_proc (no engine involved).
        say("[bench] quota path: ext_proc throughput, no quota / in memory / in Redis ...")
        big = {"tokens_per_minute": 10**12, "requests_per_minute": 10**12}
        cases = {
            "no quota": (meshes["fifo"], await new_key(meshes["fifo"], "bench-free")),
            "quota, memory": (meshes["fifo"], await new_key(meshes["fifo"], "bench-q", **big)),
            "quota, redis": (meshes["redis"], await new_key(meshes["redis"], "bench-q", **big)),
        }
        rates: dict[str, list[float]] = {c: [] for c in cases}
        with contextlib.ExitStack() as stack:
            proxies = {}
            for case, (mesh, key) in cases.items():
                assert mesh.cfg is not None
                body = extproc_body(text(random.Random(3), 64), key)
                proxy = stack.enter_context(
                    tcp_proxy(mesh.router_address, mesh.cfg.tls.files("envoy"), workdir)
                )
                proxies[case] = (proxy, body, mesh)
                await check_extproc_answer(proxy, body)
            for r in range(args.blocks):
                order = list(cases)[r % 3 :] + list(cases)[: r % 3]
                for case in order:
                    proxy, body, mesh = proxies[case]
                    assert mesh.router is not None
                    os.sched_setaffinity(mesh.router.pid, {0})
                    say(f"[bench] ext_proc block {r + 1}/{args.blocks}, {case} ...")
                    rates[case].append(extproc_h2load(proxy, body, args.exchanges, 4, 64))
                    os.sched_setaffinity(mesh.router.pid, set(range(os.cpu_count() or 1)))
        results["extproc_turns_per_s"] = {c: statistics.median(v) for c, v in rates.items()}
        results["extproc_blocks"] = rates
    finally:
        for mesh in meshes.values():
            mesh.stop()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nfair share (one small engine, A floods with {args.flood} streams of 300 tokens, "
          f"B sends {args.b_turns} turns of 16 tokens one at a time)\n")  # fmt: skip
    rows = []
    for name in ("fair", "fifo"):
        r = results[name]
        alone, flooded = r["b_alone"], r["b_flood"]
        rows.append([
            "on" if name == "fair" else "off",
            percentile(alone, 50) * 1e3, percentile(alone, 99) * 1e3,
            percentile(flooded, 50) * 1e3, percentile(flooded, 90) * 1e3,
            percentile(flooded, 99) * 1e3, percentile(flooded, 99) / percentile(alone, 99),
            sum(x != x for x in flooded),
        ])  # fmt: skip
    print(table(["fair share", "B alone p50 ms", "B alone p99 ms", "B flood p50 ms",
                 "B flood p90 ms", "B flood p99 ms", "p99 flood / alone", "B failed"],
                rows))  # fmt: skip
    print(
        f"\ntwo backlogged tenants for {args.seconds:g}s (A: {args.flood} streams, C: "
        f"{max(1, args.flood // 2)}); service = input + 2 x output tokens of turns ended\n"
    )
    rows = []
    for name in ("fair", "fifo"):
        s = results[name]["service"]
        rows.append([
            "on" if name == "fair" else "off", s["service_a"], s["service_c"],
            s["service_a"] / max(1.0, s["service_c"]), s["max_gap"], s["end_gap"],
            s["tokens_per_s"],
        ])  # fmt: skip
    print(table(["fair share", "service A", "service C", "A / C", "max |gap|", "gap at end",
                 "tokens/s"], rows))  # fmt: skip
    on, off = (results[n]["service"]["tokens_per_s"] for n in ("fair", "fifo"))
    print(f"\ntokens/s with fair share on: {on / off * 100:.0f} % of off")
    for name in ("fair", "fifo"):
        stalls = ", ".join(f"{svc} {n}" for svc, n in results[name]["stalls"].items())
        print(f"event-loop stalls over {STALL_SECONDS:g} s during the phases ({name}): {stalls}")
    for name in ("fair", "fifo"):
        if results[name]["errors"]:
            print(f"errors ({name}): {results[name]['errors']}")
        if results[name]["ext_proc_stats"]:
            print(f"Envoy's ext_proc counters ({name}): {results[name]['ext_proc_stats']}")
    ext = results["extproc_turns_per_s"]
    base = ext["no quota"]
    print(f"\nrouter ext_proc on one core (median of {args.blocks} blocks of {args.exchanges}):")
    for case, v in ext.items():
        print(f"  {case}: {v:.0f} turns/s ({(v / base - 1) * 100:+.1f}%)")
    write_json(args.json, results)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--flood", type=int, default=16, help="A's concurrent streams")
    p.add_argument("--b-turns", type=int, default=30, help="B's turns per phase")
    p.add_argument("--seconds", type=float, default=40, help="phase 3 length")
    p.add_argument("--capacity", type=int, default=8, help="the fair mesh's engine capacity")
    p.add_argument("--exchanges", type=int, default=10000, help="ext_proc exchanges per block")
    p.add_argument("--blocks", type=int, default=3, help="h2load blocks per case")
    p.add_argument("--json", help="also write the figures to this file")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
