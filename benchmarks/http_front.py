"""The OpenAI HTTP/SSE front against gRPC, through the same mesh, side by side.

One mesh from `mesh-bench.yaml` as `switchyard up` runs it (an API key per turn, mutual TLS on
every internal hop, the safety filter), one small engine. The same work over both fronts:
`POST /v1/completions` with `stream: true` (HTTP/1.1 keep-alive, reading SSE events) and
`Inference/Generate` (grpcio), same prompt length, `max_tokens`, greedy sampling.

1. TTFT (request sent → first text): one turn at a time, gRPC, HTTP (a minimal HTTP/1.1
   client, so that the figure is the front's, not a library's) and HTTP with httpx, in rotating
   order, a pause before each turn longer than vLLM's CPU worker busy-waits after a
   step; distinct prompts per path (no shared prefix cache). Added = HTTP minus gRPC.
2. Turns/s: `--concurrency` clients each running whole turns (`--tokens` tokens) for a block of
   `--turns-per-block` turns, blocks alternating between the fronts; the median block.

    .venv/bin/python benchmarks/http_front.py [--turns 100] [--blocks 4] [--json out.json]

Figures, not pass/fail. Goal: ≤ 1 ms p50 TTFT added by the HTTP front.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile, prompts, say, table, write_json

from services.mesh.up import Mesh

HERE = Path(__file__).resolve().parent
FRONTS = ("grpc", "http")
# TTFT is also measured with httpx as the HTTP client (what a Python SDK pays on top).
TTFT_PATHS = (*FRONTS, "httpx")


class RawHttp:
    """A minimal HTTP/1.1 client on keep-alive connections (chunked SSE responses only): what
    the front costs, not what a Python HTTP library costs (httpx adds ~2-3 ms per turn here,
    measured as the third front)."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self._addr = (host, port)
        self._head = f"Host: {host}\r\nAuthorization: Bearer {key}\r\n".encode()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def events(self, path: str, body: bytes) -> AsyncIterator[bytes]:
        """POST `body`; yield each SSE event's data as it arrives."""
        conn = self._idle.pop() if self._idle else await asyncio.open_connection(*self._addr)
        reader, writer = conn
        writer.write(
            b"POST " + path.encode() + b" HTTP/1.1\r\n" + self._head
            + b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200") or b"chunked" not in head.lower():
            raise RuntimeError(f"unexpected answer: {head[:200]!r}")
        pending = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, if any
                    pass
                break
            pending += (await reader.readexactly(size + 2))[:-2]
            *done, pending = pending.split(b"\n\n")
            for event in done:
                yield event[len(b"data: ") :]
        self._idle.append(conn)

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()


class Fronts:
    """One client per front, all to the mesh's Envoy as tenant "dev"."""

    def __init__(self, mesh: Mesh) -> None:
        from services.mesh.client import MeshClient

        self.grpc = MeshClient.connect(mesh.endpoint, key=mesh.dev_key, resume=None)
        host, _, port = mesh.endpoint.rpartition(":")
        self.http = RawHttp(host, int(port), mesh.dev_key)
        self.httpx = httpx.AsyncClient(
            base_url=f"http://{mesh.endpoint}",
            headers={"authorization": f"Bearer {mesh.dev_key}"},
            timeout=120,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    async def close(self) -> None:
        await self.grpc.close()
        await self.http.close()
        await self.httpx.aclose()

    async def turn(self, front: str, text: str, max_tokens: int) -> tuple[float, int]:
        """(seconds to the first text, text pieces received) for one whole turn."""
        start = time.perf_counter()
        first = float("nan")
        pieces = 0
        if front == "grpc":
            from services.mesh.client import make_request

            stream = self.grpc.stream(make_request(text, max_tokens=max_tokens, temperature=0.0))
            async with contextlib.aclosing(stream) as messages:
                async for msg in messages:
                    if msg.HasField("delta") and msg.delta.text:
                        if not pieces:
                            first = time.perf_counter() - start
                        pieces += 1
            return first, pieces
        body = {
            "model": "small",
            "prompt": text,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
        }
        if front == "http":
            async for data in self.http.events("/v1/completions", json.dumps(body).encode()):
                if data != b"[DONE]" and json.loads(data)["choices"][0]["text"]:
                    if not pieces:
                        first = time.perf_counter() - start
                    pieces += 1
            return first, pieces
        async with self.httpx.stream("POST", "/v1/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["text"]:
                    if not pieces:
                        first = time.perf_counter() - start
                    pieces += 1
        return first, pieces


async def measure_ttft(fronts: Fronts, turns: int, gap: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {f: [] for f in TTFT_PATHS}
    for front in TTFT_PATHS:  # warm every path
        for t in prompts(5, 32, seed=7):
            await fronts.turn(front, f"{front} {t}", 4)
    for i, text in enumerate(prompts(turns, 64, seed=11)):
        order = TTFT_PATHS[i % 3 :] + TTFT_PATHS[: i % 3]
        for front in order if (i // 3) % 2 == 0 else order[::-1]:
            await asyncio.sleep(gap)  # each turn starts on an idle engine
            first, _ = await fronts.turn(front, f"{front} {text}", 4)
            out[front].append(first)
    return out


PICK_SPAN = "switchyard.router.pick"
GENERATE_SPAN = "switchyard.engine.generate"


def hop_times(traces: Path) -> dict[str, dict[str, float]]:
    """Per front, p50 ms from Envoy's ingress span to the router's pick span and to the
    engine's generate span: what the request path costs before the engine starts, without the
    engine's own variance (an HTTP turn's pick span carries `switchyard.api`)."""
    from services.mesh.trace import read_spans

    turns: dict[str, dict[str, Any]] = {}
    for span in read_spans(traces):
        t = turns.setdefault(span.trace_id, {})
        t[span.name] = span.start_ns
        if span.name == PICK_SPAN:
            t["front"] = "http" if "switchyard.api" in span.attributes else "grpc"
    out: dict[str, dict[str, float]] = {}
    for front in FRONTS:
        mine = [t for t in turns.values() if t.get("front") == front and "ingress" in t]
        out[front] = {}
        for key, name in (("to_pick", PICK_SPAN), ("to_engine", GENERATE_SPAN)):
            gaps = [(t[name] - t["ingress"]) / 1e6 for t in mine if name in t]
            out[front][key] = percentile(gaps, 50) if gaps else float("nan")
        out[front]["turns"] = len(mine)
    return out


async def block(fronts: Fronts, front: str, turns: int, concurrency: int, tokens: int) -> float:
    texts = iter(prompts(turns, 48, seed=int(time.time())))
    done = 0

    async def worker() -> None:
        nonlocal done
        for text in texts:
            await fronts.turn(front, f"{front} {text}", tokens)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


async def main_async(args: argparse.Namespace) -> int:
    from services.mesh.models import default_models_dir, init_models

    models = default_models_dir()
    init_models(models, ["small"], progress=lambda m: say(f"[models] {m}"))
    os.environ["SWITCHYARD_MODELS"] = str(models)
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    mesh = Mesh(HERE / "mesh-bench.yaml", free_ports=True, say=say, traces_dir=workdir / "t")
    results: dict[str, Any] = {}
    try:
        say("[bench] starting the mesh ...")
        mesh.start()
        fronts = Fronts(mesh)
        try:
            say(f"[bench] TTFT: {args.turns} turns per front, order alternating ...")
            t = await measure_ttft(fronts, args.turns, args.gap)
            await asyncio.sleep(3)  # the services export spans every second
            hops = hop_times(workdir / "t")
            rates: dict[str, list[float]] = {f: [] for f in FRONTS}
            for b in range(args.blocks):
                for front in FRONTS if b % 2 == 0 else FRONTS[::-1]:
                    say(f"[bench] throughput block {b + 1}/{args.blocks}, {front} ...")
                    await asyncio.sleep(args.gap)
                    rates[front].append(
                        await block(
                            fronts, front, args.turns_per_block, args.concurrency, args.tokens
                        )
                    )
        finally:
            await fronts.close()
    finally:
        mesh.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    ttft = {
        f: {"p50": percentile(v, 50) * 1e3, "p99": percentile(v, 99) * 1e3} for f, v in t.items()
    }
    added = {q: ttft["http"][q] - ttft["grpc"][q] for q in ("p50", "p99")}
    # Paired: each HTTP turn against the gRPC turn of the same round (same moment of the machine).
    paired = [(h - g) * 1e3 for h, g in zip(t["http"], t["grpc"], strict=True)]
    paired_httpx = [(h - g) * 1e3 for h, g in zip(t["httpx"], t["grpc"], strict=True)]
    tps = {f: statistics.median(v) for f, v in rates.items()}
    results.update(
        ttft_ms=ttft,
        added_ms=added,
        paired_added_p50_ms=statistics.median(paired),
        paired_added_httpx_p50_ms=statistics.median(paired_httpx),
        hops_ms=hops,
        turns_per_s=tps,
        blocks=rates,
    )
    print(
        f"\nHTTP/SSE front vs gRPC ({args.turns} turns per front, 64-word prompts, small model)\n"
    )
    names = {
        "grpc": "gRPC (grpcio)",
        "http": "HTTP/SSE (raw HTTP/1.1)",
        "httpx": "HTTP/SSE (httpx)",
    }
    rows: list[list[Any]] = [[names[f], ttft[f]["p50"], ttft[f]["p99"]] for f in TTFT_PATHS]
    rows.append(["added by HTTP/SSE", added["p50"], added["p99"]])
    print(table(["front (client)", "TTFT p50 ms", "TTFT p99 ms"], rows))
    print(f"\nmedian of paired differences, turn by turn: HTTP − gRPC "
          f"{results['paired_added_p50_ms']:+.2f} ms; with httpx as the client "
          f"{results['paired_added_httpx_p50_ms']:+.2f} ms")  # fmt: skip
    print("\nfrom the traces, p50 ms after Envoy's ingress span starts (TTFT turns, warm-up):\n")
    print(
        table(
            ["front", "router pick starts", "engine starts", "turns"],
            [[f, hops[f]["to_pick"], hops[f]["to_engine"], int(hops[f]["turns"])] for f in FRONTS]
            + [
                [
                    "HTTP adds",
                    hops["http"]["to_pick"] - hops["grpc"]["to_pick"],
                    hops["http"]["to_engine"] - hops["grpc"]["to_engine"],
                    "",
                ]
            ],
        )
    )
    print(f"\nturns/s, {args.concurrency} clients, {args.tokens} tokens per turn, median of "
          f"{args.blocks} blocks of {args.turns_per_block} turns: grpc {tps['grpc']:.2f}, "
          f"http {tps['http']:.2f} ({(tps['http'] / tps['grpc'] - 1) * 100:+.1f}%)")  # fmt: skip
    for f, v in rates.items():
        print(f"  {f} blocks: " + ", ".join(f"{x:.2f}" for x in v))
    write_json(args.json, results)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--turns", type=int, default=100, help="TTFT samples per front")
    p.add_argument("--blocks", type=int, default=4, help="throughput blocks per front")
    p.add_argument("--turns-per-block", type=int, default=48, help="turns in a block")
    p.add_argument("--concurrency", type=int, default=8, help="clients in a block")
    p.add_argument("--tokens", type=int, default=16, help="max_tokens of a throughput turn")
    p.add_argument("--gap", type=float, default=1.2, help="seconds idle before each TTFT turn")
    p.add_argument("--json", help="also write the figures to this file")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
