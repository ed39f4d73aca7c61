"""What the gRPC engine service costs over vLLM's AsyncLLM used in-process.

The same prompts go through both paths, side by side in one run: an `AsyncLLM` built in this
process with the engine's own vLLM arguments, and a `switchyard engine` process reached over gRPC
on loopback. For each concurrency level the two paths alternate round by round, and the table
gives TTFT p50/p99 (call start → first text) and output tokens/s (all completion tokens / wall
time) for each, with the differences.

    .venv/bin/python benchmarks/engine_overhead.py                # small model, c = 1, 8, 32
    .venv/bin/python benchmarks/engine_overhead.py --model large --rounds 5 --json out.json

Figures, not pass/fail. Goal: the gRPC layer adds ≤ 1 ms p50 TTFT and costs ≤ 5% throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile, prompts, say, table, write_json

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Sample:
    ttfts: list[float] = field(default_factory=list)
    tokens: int = 0
    wall: float = 0.0

    def add(self, other: Sample) -> None:
        self.ttfts += other.ttfts
        self.tokens += other.tokens
        self.wall += other.wall


Runner = Callable[[str, int], Awaitable[tuple[float, int]]]


async def run_level(one: Runner, texts: list[str], concurrency: int, max_tokens: int) -> Sample:
    """Send `texts` with at most `concurrency` in flight; TTFT per turn and total tokens/wall."""
    sem = asyncio.Semaphore(concurrency)
    sample = Sample()

    async def task(text: str) -> None:
        async with sem:
            ttft, n = await one(text, max_tokens)
            sample.ttfts.append(ttft)
            sample.tokens += n

    start = time.perf_counter()
    await asyncio.gather(*(task(t) for t in texts))
    sample.wall = time.perf_counter() - start
    return sample


def in_process_runner(llm, tokenizer) -> Runner:  # type: ignore[no-untyped-def]
    from vllm.inputs.engine import tokens_input
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    async def one(text: str, max_tokens: int) -> tuple[float, int]:
        # The same work the engine service does per turn: tokenize, then stream deltas.
        start = time.perf_counter()
        ids = tokenizer.encode(text, add_special_tokens=True)
        sp = SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0,
            ignore_eos=True,
            output_kind=RequestOutputKind.DELTA,
        )
        ttft, n = float("nan"), 0
        async for out in llm.generate(tokens_input(ids), sp, uuid.uuid4().hex):
            c = out.outputs[0]
            n += len(c.token_ids)
            if c.text and ttft != ttft:
                ttft = time.perf_counter() - start
        return ttft, n

    return one


def grpc_runner(client) -> Runner:  # type: ignore[no-untyped-def]
    from services.mesh.client import make_request

    async def one(text: str, max_tokens: int) -> tuple[float, int]:
        start = time.perf_counter()
        req = make_request(text, max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        ttft, n = float("nan"), 0
        async for msg in client.stream(req):
            if msg.HasField("delta"):
                if ttft != ttft:
                    ttft = time.perf_counter() - start
            else:
                n = msg.final.usage.completion_tokens
        return ttft, n

    return one


async def grpc_floor(samples: int = 300) -> float:
    """p50 ms of a bare grpc.aio round trip to the first streamed message (echo server and
    client in this process): the transport's floor on this machine, for scale."""
    import grpc

    from switchyard.v1 import inference_pb2 as pb

    async def handler(req, ctx):  # type: ignore[no-untyped-def]
        yield pb.GenerateResponse(delta=pb.Delta(text="x"))

    server = grpc.aio.server()
    h = grpc.unary_stream_rpc_method_handler(
        handler,
        request_deserializer=pb.GenerateRequest.FromString,
        response_serializer=pb.GenerateResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("switchyard.v1.Inference", {"Generate": h}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    times = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_stream(
            "/switchyard.v1.Inference/Generate",
            request_serializer=pb.GenerateRequest.SerializeToString,
            response_deserializer=pb.GenerateResponse.FromString,
        )
        for _ in range(samples):
            start = time.perf_counter()
            async for _msg in call(pb.GenerateRequest(prompt="hi")):
                times.append(time.perf_counter() - start)
    await server.stop(None)
    return percentile(times[samples // 5 :], 50) * 1e3


async def main_async(args: argparse.Namespace) -> int:
    from services.common.config import load_config
    from services.common.pki import OPERATOR
    from services.engine.config import EngineConfig
    from services.engine.runtime import engine_args
    from services.mesh import procs
    from services.mesh.client import MeshClient, channel
    from services.mesh.models import default_models_dir, init_models

    models = default_models_dir()
    init_models(models, [args.model], progress=lambda m: say(f"[models] {m}"))
    os.environ["SWITCHYARD_MODELS"] = str(models)
    config_path = ROOT / "deploy" / "local" / f"engine-{args.model}.yaml"
    cfg = load_config(config_path, EngineConfig).resolve_paths(config_path.parent)
    os.environ.update(cfg.env)
    overrides: dict[str, Any] = {"listen": "127.0.0.1:0", "tls": {"plaintext": args.plaintext}}
    if args.stream_interval > 1:
        # vLLM's own coalescing, on both paths: the first token at once, then one output per
        # this many tokens (fewer messages per turn for the gRPC path to send).
        overrides["vllm"] = {**cfg.vllm, "stream_interval": args.stream_interval}
        cfg = cfg.model_copy(update={"vllm": overrides["vllm"]})

    say(f"[bench] starting the gRPC engine ({args.model}) ...")
    engine = procs.start_engine(
        config_path,
        name="bench-engine",
        overrides=overrides,
    )
    try:
        engine.wait_ready(on_progress=say)
        say("[bench] building the in-process AsyncLLM with the same vLLM arguments ...")
        from vllm.v1.engine.async_llm import AsyncLLM

        from services.engine.kv_events import ipc_endpoint

        llm = AsyncLLM.from_engine_args(engine_args(cfg, ipc_endpoint("bench-inproc")))
        tokenizer = llm.get_tokenizer()
        # The engine serves mutual TLS (as in a mesh): call it with the operator's certificate.
        tls = None if args.plaintext else cfg.tls.files(OPERATOR)
        async with channel(engine.address, tls) as ch:
            paths: dict[str, Runner] = {
                "in-process": in_process_runner(llm, tokenizer),
                "grpc": grpc_runner(MeshClient(ch)),
            }
            # Warm both paths (lazy initialisation, first compilations).
            for one in paths.values():
                await run_level(one, prompts(8, args.prompt_words, seed=999), 8, 8)
            results = {}
            for c in args.concurrency:
                n = max(args.min_requests, 4 * c)
                acc = {name: Sample() for name in paths}
                for r in range(args.rounds):
                    texts = prompts(n, args.prompt_words, seed=1000 * c + r)
                    order = list(paths) if r % 2 == 0 else list(reversed(paths))
                    for name in order:
                        # Let the other engine's OpenMP threads stop spinning before measuring.
                        await asyncio.sleep(args.settle)
                        s = await run_level(paths[name], texts, c, args.max_tokens)
                        acc[name].add(s)
                    say(f"[bench] concurrency {c}: round {r + 1}/{args.rounds} done")
                results[c] = acc
        llm.shutdown()
        del llm  # shut down now, not in __del__ at interpreter exit
        gc.collect()
    finally:
        engine.stop()

    rows, out = [], {}
    for c, acc in results.items():
        ip, g = acc["in-process"], acc["grpc"]
        ip50, g50 = percentile(ip.ttfts, 50) * 1e3, percentile(g.ttfts, 50) * 1e3
        ip99, g99 = percentile(ip.ttfts, 99) * 1e3, percentile(g.ttfts, 99) * 1e3
        ipt, gt = ip.tokens / ip.wall, g.tokens / g.wall
        rows.append([c, ip50, g50, g50 - ip50, ip99, g99, ipt, gt, 100 * (gt / ipt - 1)])
        out[c] = {
            "in_process": {"ttft_p50_ms": ip50, "ttft_p99_ms": ip99, "tokens_per_s": ipt},
            "grpc": {"ttft_p50_ms": g50, "ttft_p99_ms": g99, "tokens_per_s": gt},
        }
    print(
        f"\nengine overhead: model {args.model}, {args.max_tokens} output tokens/turn, "
        f"{args.prompt_words}-word prompts, {args.rounds} rounds per path, gRPC "
        f"{'plaintext' if args.plaintext else 'mutual TLS'}\n"
    )
    print(
        table(
            [
                "concurrency",
                "TTFT p50 in-proc ms",
                "TTFT p50 gRPC ms",
                "added p50 ms",
                "TTFT p99 in-proc ms",
                "TTFT p99 gRPC ms",
                "tok/s in-proc",
                "tok/s gRPC",
                "throughput Δ %",
            ],
            rows,
        )
    )
    floor = await grpc_floor()
    print(
        f"\nfor scale: a bare grpc.aio streaming round trip on this machine takes {floor:.2f} ms "
        "p50 (echo server, no engine)"
    )
    out["grpc_floor_p50_ms"] = floor  # type: ignore[assignment]
    write_json(args.json, out)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="small", choices=["small", "large"])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--rounds", type=int, default=4, help="rounds per path and level (alternating)")
    p.add_argument("--settle", type=float, default=1.0, help="idle seconds before each measurement")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument(
        "--stream-interval",
        type=int,
        default=1,
        help="vLLM's stream_interval on both paths (tokens per output after the first)",
    )
    p.add_argument("--prompt-words", type=int, default=64)
    p.add_argument("--min-requests", type=int, default=32, help="turns per round at least")
    p.add_argument(
        "--plaintext", action="store_true", help="the engine without TLS (as before trust)"
    )
    p.add_argument("--json", help="also write the figures to this file")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
