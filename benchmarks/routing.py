"""Routing quality on a multi-tenant, multi-turn workload: round robin vs least loaded vs the
Switchyard router, against the same engines.

Each tenant has a long system prompt shared by its sessions; each session is a multi-turn chat
whose history grows turn by turn. The engines' KV caches hold only a fraction of all prefixes,
so where a turn lands decides whether its prefix is cached. All three policies send the turns
straight to the engine they choose (the router's choice comes from `Router.Pick`, committed, the
same decision its ext_proc gives Envoy); each policy gets fresh system prompts so no policy rides
another's cache. Reported: prefix-cache hit rate (cached / prompt tokens), TTFT p50/p99, and load
imbalance (max / mean turns per engine).

    .venv/bin/python benchmarks/routing.py [--tenants 12 --sessions 2 --turns 3 --concurrency 6]

Figures, not pass/fail. Goal: the router's TTFT p50 ≥ 3x better than round robin, imbalance ≤ 1.3.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORDS, percentile, say, table, write_json

from services.common import headers

HERE = Path(__file__).resolve().parent


@dataclass
class Session:
    tenant: str
    session_id: str
    system: str
    history: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Result:
    ttfts: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    per_engine: Counter[str] = field(default_factory=Counter)


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


Chooser = Callable[[object, Session], Awaitable[str]]


async def run_policy(
    name: str,
    choose: Chooser,
    release: Callable[[str], None],
    stubs: dict[str, object],
    sessions: list[Session],
    args: argparse.Namespace,
    seed: int,
) -> Result:
    from services.mesh.client import make_request

    rnd = random.Random(seed)
    # Every session's turns in order; sessions interleaved at random.
    queue = [s for s in sessions for _ in range(args.turns)]
    rnd.shuffle(queue)
    res = Result()
    sem = asyncio.Semaphore(args.concurrency)
    locks = {s.session_id: asyncio.Lock() for s in sessions}

    async def turn(s: Session) -> None:
        async with locks[s.session_id], sem:
            user = " ".join(rnd.choice(WORDS) for _ in range(12))
            msgs = [("system", s.system), *s.history, ("user", user)]
            req = make_request(messages=msgs, max_tokens=args.max_tokens, temperature=0.0)
            req.session_id = s.session_id
            endpoint = await choose(req, s)
            start = time.perf_counter()
            ttft, text = float("nan"), []
            try:
                # Each tenant's prefix-cache salt, as the mesh sends it (and Router.Pick uses).
                salt = ((headers.CACHE_SALT, f"tenant:{s.tenant}"),)
                async for msg in stubs[endpoint].stream(req, metadata=salt):  # type: ignore[attr-defined]
                    if msg.HasField("delta"):
                        if ttft != ttft:
                            ttft = time.perf_counter() - start
                        text.append(msg.delta.text)
                    else:
                        res.prompt_tokens += msg.final.usage.prompt_tokens
                        res.cached_tokens += msg.final.usage.cached_prompt_tokens
                        res.per_engine[msg.final.served_by.engine] += 1
            finally:
                release(endpoint)
            res.ttfts.append(ttft)
            s.history += [("user", user), ("assistant", "".join(text))]

    await asyncio.gather(*(turn(s) for s in queue))
    say(f"[bench] {name}: {len(queue)} turns done")
    return res


async def main_async(args: argparse.Namespace) -> int:
    from services.mesh.client import MeshClient, channel
    from services.mesh.models import default_models_dir, init_models
    from services.mesh.up import Mesh
    from switchyard.v1 import router_pb2, router_pb2_grpc

    models = default_models_dir()
    init_models(models, ["large"], progress=lambda m: say(f"[models] {m}"))
    os.environ["SWITCHYARD_MODELS"] = str(models)
    mesh = Mesh(Path(args.config), free_ports=True, say=say)
    results: dict[str, Result] = {}
    try:
        mesh.start()
        addresses = [e.address for e in mesh.engines]
        tls = mesh.operator_tls()  # engines and the router's Pick take the operator identity
        channels = [channel(a, tls) for a in addresses]
        stubs: dict[str, object] = {
            a: MeshClient(c) for a, c in zip(addresses, channels, strict=True)
        }
        async with channel(mesh.router_address, tls) as rch:
            router = router_pb2_grpc.RouterStub(rch)
            rr = itertools.cycle(addresses)
            in_flight: Counter[str] = Counter()

            async def round_robin(req: object, s: Session) -> str:
                return next(rr)

            async def least_loaded(req: object, s: Session) -> str:
                best = min(addresses, key=lambda a: (in_flight[a], rnd.random()))
                in_flight[best] += 1
                return best

            async def switchyard(req: object, s: Session) -> str:
                resp = await router.Pick(
                    router_pb2.PickRequest(request=req, tenant=s.tenant, commit=True)
                )  # type: ignore[arg-type]
                return str(resp.endpoint)

            def release_ll(a: str) -> None:
                in_flight[a] -= 1

            rnd = random.Random(5)
            policies: list[tuple[str, Chooser, Callable[[str], None]]] = [
                ("round robin", round_robin, lambda a: None),
                ("least loaded", least_loaded, release_ll),
                ("switchyard router", switchyard, lambda a: None),
            ]
            for i, (name, choose, release) in enumerate(policies):
                say(f"[bench] policy {name} ...")
                sessions = make_sessions(args, seed=100 + i)
                results[name] = await run_policy(
                    name, choose, release, stubs, sessions, args, seed=7
                )
        for c in channels:
            await c.close()
    finally:
        mesh.stop()

    rows, out = [], {}
    rr50 = percentile(results["round robin"].ttfts, 50)
    for name, r in results.items():
        counts = [r.per_engine.get(e.name, 0) for e in mesh.engines]
        imbalance = max(counts) / (sum(counts) / len(counts)) if sum(counts) else float("nan")
        hit = r.cached_tokens / r.prompt_tokens if r.prompt_tokens else 0.0
        p50, p99 = percentile(r.ttfts, 50), percentile(r.ttfts, 99)
        rows.append(
            [
                name,
                f"{100 * hit:.1f}%",
                p50 * 1e3,
                p99 * 1e3,
                rr50 / p50,
                imbalance,
                "/".join(map(str, counts)),
            ]
        )
        out[name] = {
            "hit_rate": hit,
            "ttft_p50_ms": p50 * 1e3,
            "ttft_p99_ms": p99 * 1e3,
            "imbalance": imbalance,
            "turns_per_engine": counts,
        }
    print(
        f"\nrouting: {args.tenants} tenants x {args.sessions} sessions x {args.turns} turns, "
        f"{args.system_words}-word system prompts, concurrency {args.concurrency}, "
        f"{len(mesh.engines)} engines x 48 KV blocks of 128 tokens\n"
    )
    print(
        table(
            [
                "policy",
                "prefix hit rate",
                "TTFT p50 ms",
                "TTFT p99 ms",
                "p50 speed-up vs RR",
                "imbalance",
                "turns per engine",
            ],
            rows,
        )
    )
    write_json(args.json, out)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config",
        default=str(HERE / "routing-bench.yaml"),
        help="mesh config: engines, and the router's scheduling profile",
    )
    p.add_argument("--tenants", type=int, default=12)
    p.add_argument("--sessions", type=int, default=2, help="sessions per tenant")
    p.add_argument("--turns", type=int, default=3, help="turns per session")
    p.add_argument("--system-words", type=int, default=400)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=3)
    p.add_argument("--json", help="also write the figures to this file")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
