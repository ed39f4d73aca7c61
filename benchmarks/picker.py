"""Pick latency of the router's scheduler (pure Python, no gRPC): p50/p99 in microseconds.

One pool of 64 engines; the prefix index holds ~100k cache blocks, from synthetic vLLM KV events
(precise) or from routed prompts (approximate, engines without KV events). Prompts are 2k tokens:
16 shared system prompts of 512 tokens, then a body; half the requests continue an indexed
prompt, a third share only a system prompt, the rest are new. Every pick is committed (pending,
sessions, approximate index) and each engine reports its load about every 64 picks, as between
two heartbeats (one report per pick with 64 engines). The timed call is `Scheduler.pick(req)`
on a fresh request, so it includes hashing the prompt's blocks (shown apart as "hash p50").

    .venv/bin/python benchmarks/picker.py
    .venv/bin/python benchmarks/picker.py --picks 5000 --json out.json
    .venv/bin/python benchmarks/picker.py --engines 16 --modes approx

Figures, not pass/fail. Goal: pick p50 <= 200 us with 64 engines and 100k indexed blocks.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile, say, table, write_json  # noqa: E402

from services.router.kvindex import KvIndex, KvIndexConfig, block_hashes  # noqa: E402
from services.router.registry import Registry  # noqa: E402
from services.router.scheduling.scheduler import Scheduler  # noqa: E402
from services.router.sessions import SessionTable  # noqa: E402
from services.router.testing import (  # noqa: E402
    FakeVllm,
    batch,
    make_engine,
    make_load,
    make_request,
)

SYSTEM_PROMPTS = 16
SYSTEM_TOKENS = 512
VOCAB = 50_000


def tokens(rnd: random.Random, n: int) -> list[int]:
    return [rnd.randrange(1, VOCAB) for _ in range(n)]


def build(
    n_engines: int, n_blocks: int, block_size: int, prompt_tokens: int, precise: bool, seed: int
) -> tuple[Registry, Scheduler, list[list[int]], list[list[int]]]:
    """A registry + scheduler whose index holds ~n_blocks blocks; returns the system prompts and
    the indexed prompts too."""
    rnd = random.Random(seed)
    index = KvIndex(KvIndexConfig(approx_max_blocks=1_000_000, approx_ttl=3600))
    reg = Registry(stale_after=3600, index=index)
    per_engine = n_blocks // n_engines
    for i in range(n_engines):
        make_engine(
            reg,
            f"e{i:02d}",
            kv_block_size=block_size,
            kv_events=precise,
            kv_num_blocks=2 * per_engine + 1024,
        )
    sched = Scheduler(reg, index, SessionTable(), fallbacks=2)
    systems = [tokens(rnd, SYSTEM_TOKENS) for _ in range(SYSTEM_PROMPTS)]
    vllm = {e.engine_id: FakeVllm(e.engine_id) for e in reg.engines()}
    seq = dict.fromkeys(vllm, 0)
    has_system: set[tuple[str, int]] = set()
    indexed: list[list[int]] = []
    total = 0
    while total < n_blocks:
        s = rnd.randrange(SYSTEM_PROMPTS)
        prompt = systems[s] + tokens(rnd, prompt_tokens - SYSTEM_TOKENS)
        eid = f"e{rnd.randrange(n_engines):02d}"
        first = SYSTEM_TOKENS // block_size if (eid, s) in has_system else 0
        has_system.add((eid, s))
        if precise:
            seq[eid] += 1
            reg.on_kv_events(
                eid, batch(seq[eid], vllm[eid].stored(prompt, block_size, first_block=first))
            )
        else:
            index.record_routed(eid, block_hashes(prompt, block_size))
        total += prompt_tokens // block_size - first
        indexed.append(prompt)
    return reg, sched, systems, indexed


def run(
    n_engines: int,
    n_blocks: int,
    block_size: int,
    prompt_tokens: int,
    precise: bool,
    picks: int,
    seed: int,
) -> dict[str, float]:
    reg, sched, systems, indexed = build(
        n_engines, n_blocks, block_size, prompt_tokens, precise, seed
    )
    rnd = random.Random(seed + 1)
    engines = [e.engine_id for e in reg.engines()]
    blocks = sum(reg.indexed_blocks(e) for e in engines)
    times: list[float] = []
    hash_times: list[float] = []
    warmup = 200
    for i in range(warmup + picks):
        r = rnd.random()
        if r < 0.5:  # continue an indexed prompt
            base = rnd.choice(indexed)
            cut = rnd.randrange(prompt_tokens // 2, prompt_tokens)
            toks = base[:cut] + tokens(rnd, prompt_tokens - cut)
        elif r < 0.8:  # share a system prompt only
            toks = rnd.choice(systems) + tokens(rnd, prompt_tokens - SYSTEM_TOKENS)
        else:
            toks = tokens(rnd, prompt_tokens)
        req = make_request(f"r{i}", tokens=toks, session_id=f"s{rnd.randrange(1000)}")
        if rnd.random() < n_engines / 64:
            # Each engine reports about every 64 picks (its pending resets).
            eid = rnd.choice(engines)
            reg.on_load(
                eid,
                make_load(
                    eid,
                    running=rnd.randrange(0, 24),
                    waiting=rnd.randrange(0, 4),
                    kv_usage=rnd.random() * 0.9,
                ),
            )
        t0 = time.perf_counter()
        sched.pick(req)
        t1 = time.perf_counter()
        if i >= warmup:
            times.append((t1 - t0) * 1e6)
            h0 = time.perf_counter()
            block_hashes(toks, block_size)
            hash_times.append((time.perf_counter() - h0) * 1e6)
    return {
        "indexed_blocks": float(blocks),
        "p50_us": percentile(times, 50),
        "p99_us": percentile(times, 99),
        "mean_us": sum(times) / len(times),
        "hash_p50_us": percentile(hash_times, 50),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engines", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=100_000, help="indexed cache blocks")
    ap.add_argument("--prompt-tokens", type=int, default=2048)
    ap.add_argument("--block-sizes", default="16,128")
    ap.add_argument("--modes", default="precise,approx")
    ap.add_argument("--picks", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()

    rows = []
    results = []
    for mode in args.modes.split(","):
        for bs in (int(b) for b in args.block_sizes.split(",")):
            say(f"{mode}, block size {bs}: indexing ~{args.blocks} blocks, {args.picks} picks")
            r = run(
                args.engines,
                args.blocks,
                bs,
                args.prompt_tokens,
                mode == "precise",
                args.picks,
                args.seed,
            )
            results.append({"mode": mode, "block_size": bs, **r})
            rows.append(
                [
                    mode,
                    bs,
                    args.prompt_tokens // bs,
                    int(r["indexed_blocks"]),
                    r["p50_us"],
                    r["p99_us"],
                    r["mean_us"],
                    r["hash_p50_us"],
                ]
            )
    print("$ " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(
        f"{args.engines} engines in one pool, {args.prompt_tokens}-token prompts, "
        f"{args.picks} committed picks per row"
    )
    print(
        table(
            [
                "index",
                "block",
                "blocks/prompt",
                "indexed blocks",
                "pick p50 us",
                "pick p99 us",
                "mean us",
                "hash p50 us",
            ],
            rows,
        )
    )
    write_json(args.json, {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
