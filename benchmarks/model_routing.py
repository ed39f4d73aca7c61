"""Cost tiers: "auto" against everything on the large pool and everything on the small pool.

The default mesh as `switchyard up` runs it (deploy/local/pools.yaml: the large pool at
8x the small pool's cost per token, "auto" tiered over small and large). A fixed mixed workload,
70 % easy and 30 % hard turns drawn from the labelled prompts
(benchmarks/data/complexity_labelled.yaml, with a fixed seed; each turn's text made unique so
the prefix cache treats every mode alike), sent three times: as `model: auto`, `model: large`
and `model: small`, in rotating blocks, `--concurrency` clients.

Per mode: cost per 1,000 turns (each turn's prompt and completion tokens at its serving pool's
price from the config), TTFT p50/p99 as the client sees it, and hard-turn placement (the share
of hard-labelled turns served by the large model: the quality proxy).

Then the response cache: `--cache-turns` distinct deterministic turns (temperature 0, model
small), each asked once (a miss: the engine answers and the safety filter stores it) and again
once stored (a hit: the router's replay answers), one at a time; TTFT p50/p99 of misses and
hits side by side.

    .venv/bin/python benchmarks/model_routing.py [--turns 100] [--cache-turns 50] [--json out.json]

Figures, not pass/fail. Goals: >= 50 % lower cost than all-large at equal hard-turn placement;
cache hits answered in <= 5 ms p50.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile, say, table, write_json

from services.mesh.client import MeshClient, make_request
from services.mesh.up import Mesh
from services.router.config import load_mesh_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIG = ROOT / "deploy" / "local" / "pools.yaml"
MODES = ("auto", "large", "small")
EASY_SHARE = 0.7


def workload(n: int, seed: int = 20261128) -> list[tuple[str, str]]:
    """`n` (label, prompt) turns, 70 % easy, in a fixed order."""
    data = yaml.safe_load((HERE / "data" / "complexity_labelled.yaml").read_text())
    rng = random.Random(seed)
    easy = round(n * EASY_SHARE)
    turns = [("easy", rng.choice(data["easy"])) for _ in range(easy)]
    turns += [("hard", rng.choice(data["hard"])) for _ in range(n - easy)]
    rng.shuffle(turns)
    return turns


async def run_mode(
    client: MeshClient, mode: str, turns: list[tuple[str, str]], concurrency: int, tokens: int
) -> list[dict[str, Any]]:
    todo = iter(enumerate(turns))
    out: list[dict[str, Any]] = []
    stamp = time.time_ns()

    async def worker() -> None:
        for i, (label, prompt) in todo:
            req = make_request(f"[{mode} {stamp} {i}] {prompt}", model=mode, max_tokens=tokens)
            start = time.perf_counter()
            first = None
            final = None
            async for msg in client.stream(req):
                if first is None and msg.HasField("delta"):
                    first = time.perf_counter() - start
                if msg.HasField("final"):
                    final = msg.final
            assert final is not None
            u = final.usage
            out.append(
                {
                    "label": label,
                    "model": final.served_by.model,
                    "pool": final.served_by.pool,
                    "tokens": u.prompt_tokens + u.completion_tokens,
                    "ttft": first if first is not None else time.perf_counter() - start,
                }
            )

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


async def timed(client: MeshClient, req: Any) -> tuple[float, Any]:
    """(TTFT seconds, Final) of one turn."""
    start = time.perf_counter()
    first = None
    final = None
    async for msg in client.stream(req):
        if first is None and msg.HasField("delta"):
            first = time.perf_counter() - start
        if msg.HasField("final"):
            final = msg.final
    assert final is not None
    return (first if first is not None else time.perf_counter() - start), final


async def run_cache(client: MeshClient, n: int, tokens: int) -> dict[str, list[float]]:
    """Misses and hits of `n` distinct deterministic turns, one at a time."""
    stamp = time.time_ns()
    data = yaml.safe_load((HERE / "data" / "complexity_labelled.yaml").read_text())
    out: dict[str, list[float]] = {"miss": [], "hit": []}
    for i in range(n):
        prompt = f"[cache {stamp} {i}] {data['easy'][i % len(data['easy'])]}"
        req = make_request(prompt, model="small", max_tokens=tokens, temperature=0)
        ttft, final = await timed(client, req)
        assert not final.cached
        out["miss"].append(ttft)
        for _ in range(50):  # the safety filter stores it in the background
            await asyncio.sleep(0.05)
            ttft, final = await timed(client, req)
            if final.cached:
                out["hit"].append(ttft)
                break
    return out


def summarize(rows: list[dict[str, Any]], price: dict[str, float]) -> dict[str, Any]:
    cost = sum(r["tokens"] * price[r["pool"]] / 1e6 for r in rows)
    hard = [r for r in rows if r["label"] == "hard"]
    easy = [r for r in rows if r["label"] == "easy"]
    ttft = [r["ttft"] for r in rows]
    return {
        "turns": len(rows),
        "usd_per_1k_turns": cost / len(rows) * 1000,
        "ttft_p50_ms": percentile(ttft, 50) * 1e3,
        "ttft_p99_ms": percentile(ttft, 99) * 1e3,
        "hard_on_large": sum(r["model"] == "large" for r in hard) / max(1, len(hard)),
        "easy_on_small": sum(r["model"] == "small" for r in easy) / max(1, len(easy)),
        "tokens": sum(r["tokens"] for r in rows),
    }


async def main_async(args: argparse.Namespace) -> int:
    from services.mesh.models import default_models_dir, init_models

    models = default_models_dir()
    init_models(models, ["small", "large"], progress=lambda m: say(f"[models] {m}"))
    os.environ["SWITCHYARD_MODELS"] = str(models)
    cfg = load_mesh_config(CONFIG)
    price = {}
    for p in cfg.pools:
        per_m = p.cost.per_million_tokens() if p.cost is not None else None
        assert per_m is not None, f"pool {p.name} has no cost in {CONFIG}"
        price[p.name] = per_m
    turns = workload(args.turns)
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    mesh = Mesh(CONFIG, free_ports=True, say=say, workdir=workdir)
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    try:
        say("[bench] starting the default mesh ...")
        mesh.start()
        async with MeshClient.connect(mesh.endpoint, key=mesh.dev_key) as client:
            say("[bench] warming up ...")
            await run_mode(client, "auto", workload(8, seed=1), 2, 4)
            blocks = [turns[i : i + args.block] for i in range(0, len(turns), args.block)]
            for b, chunk in enumerate(blocks):
                for mode in MODES[b % 3 :] + MODES[: b % 3]:
                    say(f"[bench] block {b + 1}/{len(blocks)}: {mode} ...")
                    rows[mode] += await run_mode(client, mode, chunk, args.concurrency, args.tokens)
            cache: dict[str, list[float]] = {"miss": [], "hit": []}
            if args.cache_turns:
                say(f"[bench] response cache: {args.cache_turns} turns, miss then hit ...")
                cache = await run_cache(client, args.cache_turns, args.tokens)
    finally:
        mesh.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    figures = {m: summarize(rows[m], price) for m in MODES}
    large = figures["large"]["usd_per_1k_turns"]
    for m in MODES:
        figures[m]["cost_vs_all_large"] = figures[m]["usd_per_1k_turns"] / large - 1
    print(
        f"\nModel routing: {args.turns} turns per mode ({EASY_SHARE:.0%} easy), "
        f"{args.concurrency} clients, max_tokens {args.tokens}; prices "
        + ", ".join(f"{k} ${v:g}/M tokens" for k, v in price.items())
        + "\n"
    )
    names = {"auto": "auto (tiered)", "large": "all large", "small": "all small"}
    print(
        table(
            [
                "mode",
                "$ / 1k turns",
                "vs all-large",
                "TTFT p50 ms",
                "TTFT p99 ms",
                "hard on large",
                "easy on small",
            ],
            [
                [
                    names[m],
                    f["usd_per_1k_turns"],
                    f"{f['cost_vs_all_large'] * 100:+.0f}%",
                    f["ttft_p50_ms"],
                    f["ttft_p99_ms"],
                    f"{f['hard_on_large']:.0%}",
                    f"{f['easy_on_small']:.0%}",
                ]
                for m, f in figures.items()
            ],
        )
    )
    if cache["miss"]:
        print(
            f"\nResponse cache: {len(cache['miss'])} deterministic turns (model small, "
            f"max_tokens {args.tokens}), each a miss then a hit ({len(cache['hit'])} hits)\n"
        )
        print(
            table(
                ["answered by", "turns", "TTFT p50 ms", "TTFT p99 ms"],
                [
                    [
                        "engine (miss)" if k == "miss" else "cache (hit)",
                        len(v),
                        percentile(v, 50) * 1e3,
                        percentile(v, 99) * 1e3,
                    ]
                    for k, v in cache.items()
                    if v
                ],
            )
        )
        figures["cache"] = {
            k: {"turns": len(v), "ttft_p50_ms": percentile(v, 50) * 1e3,
                "ttft_p99_ms": percentile(v, 99) * 1e3}
            for k, v in cache.items() if v
        }  # fmt: skip
    write_json(args.json, figures)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--turns", type=int, default=100, help="turns per mode")
    p.add_argument("--block", type=int, default=20, help="turns per mode before the next")
    p.add_argument("--concurrency", type=int, default=4, help="clients")
    p.add_argument("--tokens", type=int, default=32, help="max_tokens of a turn")
    p.add_argument("--cache-turns", type=int, default=50, help="response cache turns (0: none)")
    p.add_argument("--json", help="also write the figures to this file")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
