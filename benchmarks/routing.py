"""Routing quality against a peer: the Switchyard router with and without session ids, and
vLLM's own router (`vllm-router`: round_robin, cache_aware, consistent_hash, kv_aware), on
engines of one config and the same multi-tenant chat workload.

Each tenant has a long system prompt shared by its sessions; each session is a multi-turn chat
whose history grows turn by turn. The engines' KV caches hold only a fraction of all prefixes,
so where a turn lands decides whether its prefix is cached.

- Switchyard: `up`'s mesh from `routing-bench.yaml` with `--engines` engines; each turn is
  placed by `Router.Pick` (committed: the same decision its ext_proc gives Envoy) and streamed
  straight from that engine over gRPC. "no ids" sends the same turns without session ids, so
  the router must recognise each conversation itself.
- The peer: as many `vllm serve` processes, configured from the same engine config
  (benchmarks/peer.py), behind `vllm-router` with one policy at a time (its defaults otherwise),
  the turns streamed over its OpenAI API with the session id in `X-Session-ID` (which its
  consistent_hash policy keys on). `vllm-router` is installed into `.venv-peer` on first use.

Every policy and run gets fresh system prompts, so none rides another's cache (the engines are
not restarted between policies: their caches evict what earlier policies left). Runs repeat
every policy in rotating order. From the engines' own metrics, scraped before and after each
policy's run, the same way on both sides: prefix-cache hit rate (vLLM's prefix-cache hits /
queries), vLLM's TTFT p50/p90 (its `vllm:time_to_first_token_seconds` histogram) and turns per
engine; from the client: TTFT p50/p90 and wall time. Medians over runs, every run, and the
comparison with the stored baseline (`benchmarks/data/routing-baseline.json`) are printed.

    .venv/bin/python benchmarks/routing.py [--engines 2 --concurrency 4 --runs 5 --json FILE]
        [--no-peer] [--save-baseline]

Figures, not pass/fail. Goals: without session ids, hit rate within 2 points and vLLM TTFT p90
within 10 % of the run with them; vLLM TTFT p50 and p90 ≤ 0.8 × the best peer policy's, and
hit rate ≥ the best peer's + 5 points.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORDS, percentile, say, table, write_json

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "data" / "routing-baseline.json"
SWITCHYARD_POLICIES = ("switchyard, session ids", "switchyard, no ids")


@dataclass
class Session:
    tenant: str
    session_id: str
    system: str
    history: list[tuple[str, str]] = field(default_factory=list)


def make_sessions(args: argparse.Namespace, seed: int) -> list[Session]:
    rnd = random.Random(seed)
    out = []
    for t in range(args.tenants):
        system = f"tenant {seed}-{t}: " + " ".join(
            rnd.choice(WORDS) for _ in range(args.system_words)
        )
        for s in range(args.sessions):
            out.append(Session(f"tenant-{t}", f"{seed}-{t}-{s}", system))
    return out


# One turn: (the session, its messages so far) → (seconds to the first text, the text).
Turn = Callable[[Session, list[tuple[str, str]]], Awaitable[tuple[float, str]]]


async def run_workload(
    turn_fn: Turn, sessions: list[Session], args: argparse.Namespace, seed: int
) -> list[float]:
    """Every session's turns in order, sessions interleaved at random, `concurrency` at once;
    returns each turn's TTFT."""
    rnd = random.Random(seed)
    queue = [s for s in sessions for _ in range(args.turns)]
    rnd.shuffle(queue)
    sem = asyncio.Semaphore(args.concurrency)
    locks = {s.session_id: asyncio.Lock() for s in sessions}
    ttfts: list[float] = []

    async def turn(s: Session) -> None:
        async with locks[s.session_id], sem:
            user = " ".join(rnd.choice(WORDS) for _ in range(12))
            msgs = [("system", s.system), *s.history, ("user", user)]
            ttft, text = await turn_fn(s, msgs)
            ttfts.append(ttft)
            s.history += [("user", user), ("assistant", text)]

    await asyncio.gather(*(turn(s) for s in queue))
    return ttfts


# -- the engines' own figures ---------------------------------------------------------------


@dataclass
class EngineStats:
    """Cumulative counters of one engine's vLLM metrics at one scrape."""

    ttft: dict[float, float]  # vllm:time_to_first_token_seconds, cumulative per bucket
    hits: float  # vllm:prefix_cache_hits (tokens)
    queries: float  # vllm:prefix_cache_queries (tokens)
    requests: float  # vllm:request_success (every finish reason)


def scrape(url: str) -> EngineStats:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    stats = EngineStats({}, 0.0, 0.0, 0.0)
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if fam.name == "vllm:time_to_first_token_seconds" and sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                stats.ttft[le] = stats.ttft.get(le, 0.0) + sample.value
            elif not sample.name.endswith("_total"):
                continue
            elif fam.name == "vllm:prefix_cache_hits":
                stats.hits += sample.value
            elif fam.name == "vllm:prefix_cache_queries":
                stats.queries += sample.value
            elif fam.name == "vllm:request_success":
                stats.requests += sample.value
    return stats


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The q-quantile (0..1) of what the histogram gained between two scrapes, interpolated
    linearly inside its bucket (as Prometheus's histogram_quantile does)."""
    bounds = sorted(after)
    cum = [after[b] - before.get(b, 0.0) for b in bounds]
    if not cum or cum[-1] <= 0:
        return float("nan")
    rank = q * cum[-1]
    prev_bound, prev = 0.0, 0.0
    for b, c in zip(bounds, cum, strict=True):
        if c >= rank:
            if b == float("inf"):
                return prev_bound
            return prev_bound + (b - prev_bound) * ((rank - prev) / (c - prev) if c > prev else 1)
        prev_bound, prev = b, c
    return prev_bound


def figures(
    before: list[EngineStats], after: list[EngineStats], ttfts: list[float], wall: float
) -> dict[str, Any]:
    ttft_b: dict[float, float] = {}
    ttft_a: dict[float, float] = {}
    for b, a in zip(before, after, strict=True):
        for le, v in b.ttft.items():
            ttft_b[le] = ttft_b.get(le, 0.0) + v
        for le, v in a.ttft.items():
            ttft_a[le] = ttft_a.get(le, 0.0) + v
    hits = sum(a.hits - b.hits for b, a in zip(before, after, strict=True))
    queries = sum(a.queries - b.queries for b, a in zip(before, after, strict=True))
    turns = [int(a.requests - b.requests) for b, a in zip(before, after, strict=True)]
    return {
        "hit_rate": hits / queries if queries else 0.0,
        "ttft_p50_ms": percentile(ttfts, 50) * 1e3,
        "ttft_p90_ms": percentile(ttfts, 90) * 1e3,
        "vllm_ttft_p50_ms": histogram_quantile(ttft_b, ttft_a, 0.5) * 1e3,
        "vllm_ttft_p90_ms": histogram_quantile(ttft_b, ttft_a, 0.9) * 1e3,
        "wall_s": wall,
        "imbalance": max(turns) / (sum(turns) / len(turns)) if sum(turns) else float("nan"),
        "turns_per_engine": turns,
    }


# -- the two sides ----------------------------------------------------------------------------


def bench_config(args: argparse.Namespace, workdir: Path) -> Path:
    """The benchmark's mesh config with `--engines` engines."""
    import yaml

    data = yaml.safe_load(Path(args.config).read_text())
    for group in data["pools"][0]["engines"]:
        group["config"] = str((Path(args.config).parent / group["config"]).resolve())
        group["count"] = args.engines
    path = workdir / "routing-bench.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class SwitchyardSide:
    """The mesh's engines and its router's Pick, over mutual TLS (the operator identity)."""

    def __init__(self, mesh: Any) -> None:
        from services.mesh.client import MeshClient, channel

        self.mesh = mesh
        tls = mesh.operator_tls()
        self.metrics = [f"http://127.0.0.1:{e.ready['metrics_port']}/metrics" for e in mesh.engines]
        self._channels = [channel(e.address, tls) for e in mesh.engines]
        self._clients = {
            e.address: MeshClient(c) for e, c in zip(mesh.engines, self._channels, strict=True)
        }
        self._router_channel = channel(mesh.router_address, tls)
        self.picks: Any = None  # a file to log every pick to

    def turn_fn(self, args: argparse.Namespace, with_ids: bool) -> Turn:
        from services.common import headers
        from services.mesh.client import make_request
        from switchyard.v1 import router_pb2, router_pb2_grpc

        router = router_pb2_grpc.RouterStub(self._router_channel)

        async def turn(s: Session, msgs: list[tuple[str, str]]) -> tuple[float, str]:
            req = make_request(messages=msgs, max_tokens=args.max_tokens, temperature=0.0)
            if with_ids:
                req.session_id = s.session_id
            pick = await router.Pick(
                router_pb2.PickRequest(request=req, tenant=s.tenant, commit=True)
            )  # type: ignore[arg-type]
            if self.picks is not None:  # --picks: every decision, for a closer look
                scores = {c.engine_id: dict(c.scores) for c in pick.candidates}
                line = {"with_ids": with_ids, "session": s.session_id, "turn": len(msgs) // 2}
                line |= {"engine": pick.engine_id, "scores": scores}
                self.picks.write(json.dumps(line) + "\n")
            start = time.perf_counter()
            ttft, text = float("nan"), []
            # Each tenant's prefix-cache salt, as the mesh sends it (and Router.Pick uses).
            salt = ((headers.CACHE_SALT, f"tenant:{s.tenant}"),)
            async for msg in self._clients[pick.endpoint].stream(req, metadata=salt):
                if msg.HasField("delta"):
                    if ttft != ttft:
                        ttft = time.perf_counter() - start
                    text.append(msg.delta.text)
            return ttft, "".join(text)

        return turn

    async def close(self) -> None:
        for c in [*self._channels, self._router_channel]:
            await c.close()


class PeerSide:
    """`vllm serve` engines of the same config; `vllm-router` started per policy."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        import yaml
        from peer import VllmServer, ensure_vllm_router

        from services.mesh.up import free_port

        self.exe = ensure_vllm_router()
        data = yaml.safe_load(Path(args.config).read_text())
        engine_config = Path(args.config).parent / data["pools"][0]["engines"][0]["config"]
        self.workdir = workdir
        self.servers = [
            VllmServer(engine_config, free_port(), free_port(), workdir / f"vllm-serve-{i}.log")
            for i in range(args.engines)
        ]
        self.metrics = [s.metrics_url for s in self.servers]
        self.model = self.servers[0].served_name

    def wait_ready(self) -> None:
        for s in self.servers:
            s.wait_ready()

    @contextlib.asynccontextmanager
    async def policy(self, policy: str, args: argparse.Namespace) -> Any:
        import httpx
        from peer import peer_router, stream_chat

        from services.mesh.up import free_port

        log = self.workdir / f"vllm-router-{policy}.log"
        with peer_router(self.exe, policy, self.servers, free_port(), free_port(), log) as url:
            timeout = httpx.Timeout(300.0)
            async with httpx.AsyncClient(timeout=timeout) as client:

                async def turn(s: Session, msgs: list[tuple[str, str]]) -> tuple[float, str]:
                    return await stream_chat(
                        client, url, self.model, msgs, s.session_id, args.max_tokens
                    )

                yield turn

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


# -- the run ----------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    from services.mesh.models import default_models_dir, init_models
    from services.mesh.up import Mesh

    models = default_models_dir()
    init_models(models, ["large"], progress=lambda m: say(f"[models] {m}"))
    os.environ["SWITCHYARD_MODELS"] = str(models)
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-routing-"))
    policies = list(SWITCHYARD_POLICIES)
    if args.peer:
        from peer import PEER_POLICIES

        policies += [f"vllm-router {p}" for p in PEER_POLICIES]
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in policies}
    mesh = Mesh(bench_config(args, workdir), free_ports=True, say=say)
    peer: PeerSide | None = None
    try:
        if args.peer:  # (loading alongside the mesh's engines)
            say(f"[bench] starting {args.engines} vllm serve engines for the peer ...")
            peer = PeerSide(args, workdir)
        mesh.start()
        if peer is not None:
            peer.wait_ready()
        side = SwitchyardSide(mesh)
        if args.picks:
            side.picks = open(args.picks, "w")  # noqa: ASYNC230 (once, before the run)
        for run in range(args.runs):
            k = run % len(policies)
            for name in policies[k:] + policies[:k]:
                say(f"[bench] run {run + 1}/{args.runs}: {name} ...")
                # Fresh system prompts per policy and run: none rides another's cache.
                sessions = make_sessions(args, seed=1000 * run + policies.index(name))
                async with contextlib.AsyncExitStack() as stack:
                    if name in SWITCHYARD_POLICIES:
                        metrics = side.metrics
                        turn_fn = side.turn_fn(args, with_ids=name == SWITCHYARD_POLICIES[0])
                    else:
                        assert peer is not None
                        metrics = peer.metrics
                        policy = name.removeprefix("vllm-router ")
                        turn_fn = await stack.enter_async_context(peer.policy(policy, args))
                    before = [scrape(u) for u in metrics]
                    start = time.perf_counter()
                    ttfts = await run_workload(turn_fn, sessions, args, seed=run)
                    wall = time.perf_counter() - start
                    await asyncio.sleep(1.5)  # the engines' last turns reach their metrics
                    after = [scrape(u) for u in metrics]
                runs[name].append(figures(before, after, ttfts, wall))
                f = runs[name][-1]
                say(f"[bench]   hit {100 * f['hit_rate']:.1f}%, vLLM TTFT p90 "
                    f"{f['vllm_ttft_p90_ms']:.0f} ms, {wall:.1f}s")  # fmt: skip
                await asyncio.sleep(args.gap)
        await side.close()
        if side.picks is not None:
            side.picks.close()
    finally:
        mesh.stop()
        if peer is not None:
            peer.stop()
    report(args, runs)
    return 0


COLUMNS = ("hit_rate", "ttft_p50_ms", "ttft_p90_ms", "vllm_ttft_p50_ms", "vllm_ttft_p90_ms",
           "wall_s", "imbalance")  # fmt: skip
HEADERS = ["policy", "prefix hit", "TTFT p50 ms", "TTFT p90 ms", "vLLM TTFT p50 ms"]
HEADERS += ["vLLM TTFT p90 ms", "wall s", "imbalance"]


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> None:
    med = {
        p: {c: statistics.median(float(x[c]) for x in v) for c in COLUMNS}
        for p, v in runs.items()
        if v
    }
    print(
        f"\nrouting: {args.tenants} tenants x {args.sessions} sessions x {args.turns} turns, "
        f"{args.system_words}-word system prompts, concurrency {args.concurrency}, "
        f"{args.engines} engines per side; {args.runs} runs, policies in rotating order "
        f"(commit {args.commit}, seeds 1000*run + policy index)\n"
    )
    print("medians over runs:")
    rows = [
        [p, f"{100 * m['hit_rate']:.1f}%", *(m[c] for c in COLUMNS[1:])] for p, m in med.items()
    ]
    print(table(HEADERS, rows))
    print("\nevery run (prefix hit, vLLM TTFT p90 ms, wall s, turns per engine):")
    for p, v in runs.items():
        cells = [
            f"{100 * x['hit_rate']:.1f}% {x['vllm_ttft_p90_ms']:.0f} {x['wall_s']:.1f}s "
            + "/".join(map(str, x["turns_per_engine"]))
            for x in v
        ]
        print(f"  {p}: " + " | ".join(cells))
    ids, no_ids = med[SWITCHYARD_POLICIES[0]], med[SWITCHYARD_POLICIES[1]]
    hit_gap = 100 * (no_ids["hit_rate"] - ids["hit_rate"])
    p90_ratio = no_ids["vllm_ttft_p90_ms"] / ids["vllm_ttft_p90_ms"]
    print(
        f"\nno ids vs session ids: hit {hit_gap:+.1f} points (goal within 2), "
        f"vLLM TTFT p90 {p90_ratio:.2f}x (goal <= 1.10x)"
    )
    peers = {p: m for p, m in med.items() if p.startswith("vllm-router")}
    if peers:
        best_hit = max(peers, key=lambda p: peers[p]["hit_rate"])
        best50 = min(peers, key=lambda p: peers[p]["vllm_ttft_p50_ms"])
        best90 = min(peers, key=lambda p: peers[p]["vllm_ttft_p90_ms"])
        hit_gap = 100 * (no_ids["hit_rate"] - peers[best_hit]["hit_rate"])
        print(
            f"no ids vs the best peer: hit {hit_gap:+.1f} points vs {best_hit} (goal >= +5); "
            "vLLM TTFT p50 "
            f"{no_ids['vllm_ttft_p50_ms'] / peers[best50]['vllm_ttft_p50_ms']:.2f}x {best50}, "
            f"p90 {no_ids['vllm_ttft_p90_ms'] / peers[best90]['vllm_ttft_p90_ms']:.2f}x {best90} "
            "(goal <= 0.80x)"
        )
    if BASELINE.exists():
        base = json.loads(BASELINE.read_text())
        print(f"\nagainst the stored baseline (commit {base['commit']}, {base['date']}):")
        for p, m in med.items():
            b = base["medians"].get(p)
            if b is None:
                continue
            gap = 100 * (m["hit_rate"] - b["hit_rate"])
            print(
                f"  {p}: hit {100 * m['hit_rate']:.1f}% ({gap:+.1f}), "
                f"vLLM TTFT p90 {m['vllm_ttft_p90_ms']:.0f} ms "
                f"({m['vllm_ttft_p90_ms'] / b['vllm_ttft_p90_ms']:.2f}x), wall "
                f"{m['wall_s']:.1f}s ({m['wall_s'] / b['wall_s']:.2f}x)"
            )
    data = {"commit": args.commit, "date": time.strftime("%Y-%m-%d"), "args": vars(args)}
    data |= {"medians": med, "runs": runs}
    write_json(args.json, data)
    if args.save_baseline:
        BASELINE.write_text(json.dumps(data, indent=1) + "\n")
        print(f"baseline saved to {BASELINE}")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config",
        default=str(HERE / "routing-bench.yaml"),
        help="mesh config: the engine config, and the router's scheduling profile",
    )
    p.add_argument("--engines", type=int, default=2, help="engines per side")
    p.add_argument("--tenants", type=int, default=8)
    p.add_argument("--sessions", type=int, default=3, help="sessions per tenant")
    p.add_argument("--turns", type=int, default=3, help="turns per session")
    p.add_argument("--system-words", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--runs", type=int, default=5, help="runs of every policy, order rotating")
    p.add_argument("--gap", type=float, default=2.0, help="seconds idle between policies")
    p.add_argument("--no-peer", dest="peer", action="store_false", help="Switchyard only")
    p.add_argument("--save-baseline", action="store_true", help=f"store the medians as {BASELINE}")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--picks", help="log every Switchyard pick (engine, scores) to this file")
    args = p.parse_args()
    # Stopped with SIGTERM: unwind, so the engines and routers it started stop too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
