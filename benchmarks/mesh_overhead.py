"""What the mesh adds: TTFT through Envoy + router vs straight to the engine, and how many turns
per second the router's ext_proc decides on one core.

1. TTFT: the same prompts sent alternately to the engine directly and through Envoy (which asks
   the router over ext_proc, then proxies to the same engine), one turn at a time.
2. ext_proc throughput: the router process is pinned to one core and driven with exactly the
   exchange Envoy has with it per turn (request headers, then the buffered GenerateRequest body,
   answered with routing headers) by `h2load` on the other core (Debian's nghttp2-client; falls
   back to a Python gRPC client when it is missing).

    .venv/bin/python benchmarks/mesh_overhead.py [--turns 100] [--json out.json]

Figures, not pass/fail. Goal: ≤ 2 ms p50 added TTFT, ≥ 1,500 turns/s on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile, prompts, say, table, write_json

HERE = Path(__file__).resolve().parent


async def ttft_once(client, text: str) -> float:  # type: ignore[no-untyped-def]
    from services.mesh.client import make_request

    start = time.perf_counter()
    stream = client.stream(make_request(text, max_tokens=4, temperature=0.0))
    async with contextlib.aclosing(stream) as messages:
        async for msg in messages:
            if msg.HasField("delta"):
                return float(time.perf_counter() - start)
    return float("nan")


async def measure_ttft(engine_addr: str, envoy_addr: str, turns: int) -> dict[str, list[float]]:
    from services.mesh.client import MeshClient, channel

    out: dict[str, list[float]] = {"direct": [], "mesh": []}
    async with channel(engine_addr) as direct_ch, channel(envoy_addr) as mesh_ch:
        stubs = {"direct": MeshClient(direct_ch), "mesh": MeshClient(mesh_ch)}
        for stub in stubs.values():  # warm both paths
            for t in prompts(5, 32, seed=7):
                await ttft_once(stub, t)
        for i, text in enumerate(prompts(turns, 64, seed=11)):
            order = ["direct", "mesh"] if i % 2 == 0 else ["mesh", "direct"]
            for name in order:
                # Distinct prompts per path, so neither rides the other's prefix cache.
                out[name].append(await ttft_once(stubs[name], f"{name} {text}"))
    return out


def extproc_body(prompt: str) -> bytes:
    """The two messages Envoy sends per turn, as one gRPC request body (two frames)."""
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

    from services.common.extproc import GENERATE_PATH
    from services.common.frames import encode_frame as grpc_frame
    from services.mesh.client import make_request

    headers = ext.ProcessingRequest(
        request_headers=ext.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=":path", raw_value=GENERATE_PATH.encode()),
                    base_pb2.HeaderValue(key="content-type", raw_value=b"application/grpc"),
                ]
            )
        )
    )
    req = make_request(prompt, max_tokens=16)
    body = ext.ProcessingRequest(
        request_body=ext.HttpBody(body=grpc_frame(req.SerializeToString()), end_of_stream=True)
    )
    return grpc_frame(headers.SerializeToString()) + grpc_frame(body.SerializeToString())


def extproc_h2load(
    router_addr: str, body: bytes, requests: int, clients: int, streams: int
) -> float:
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
        f.write(body)
    cmd = [
        "taskset",
        "-c",
        "1",
        "h2load",
        "-n",
        str(requests),
        "-c",
        str(clients),
        "-m",
        str(streams),
        "-d",
        f.name,
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        f"http://{router_addr}/envoy.service.ext_proc.v3.ExternalProcessor/Process",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    ok = re.search(r"(\d+) succeeded", out)
    if not m or not ok or int(ok.group(1)) != requests:
        raise RuntimeError(f"h2load did not complete every exchange:\n{out}")
    return float(m.group(1))


async def check_extproc_answer(router_addr: str, body: bytes) -> None:
    """One exchange by a real gRPC client: the router must answer with routing headers."""
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

    async with grpc.aio.insecure_channel(router_addr) as ch:
        call = ch.stream_stream(
            "/envoy.service.ext_proc.v3.ExternalProcessor/Process",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        frames, rest = [], body
        while rest:
            n = int.from_bytes(rest[1:5], "big")
            frames.append(rest[5 : 5 + n])
            rest = rest[5 + n :]
        answers = [a async for a in call(iter(frames))]
    last = ext.ProcessingResponse.FromString(answers[-1])
    keys = {o.header.key for o in last.request_body.response.header_mutation.set_headers}
    if "x-switchyard-endpoint" not in keys:
        raise RuntimeError(f"unexpected ext_proc answer: {last}")


async def main_async(args: argparse.Namespace) -> int:
    from services.mesh.models import default_models_dir, init_models
    from services.mesh.up import Mesh

    models = default_models_dir()
    init_models(models, ["small"], progress=lambda m: say(f"[models] {m}"))
    os.environ["SWITCHYARD_MODELS"] = str(models)
    mesh = Mesh(HERE / "mesh-bench.yaml", free_ports=True, say=say)
    results: dict[str, object] = {}
    try:
        mesh.start()
        engine_addr = mesh.engines[0].address
        say(f"[bench] TTFT: {args.turns} turns per path, alternating ...")
        t = await measure_ttft(engine_addr, mesh.endpoint, args.turns)
        d50, m50 = percentile(t["direct"], 50) * 1e3, percentile(t["mesh"], 50) * 1e3
        d99, m99 = percentile(t["direct"], 99) * 1e3, percentile(t["mesh"], 99) * 1e3
        results["ttft_ms"] = {
            "direct_p50": d50,
            "mesh_p50": m50,
            "direct_p99": d99,
            "mesh_p99": m99,
            "added_p50": m50 - d50,
        }

        body = extproc_body(prompts(1, 64, seed=3)[0])
        await check_extproc_answer(mesh.router_address, body)
        router_pid = mesh.router.pid if mesh.router else 0
        os.sched_setaffinity(router_pid, {0})
        say("[bench] ext_proc: router pinned to core 0, load from core 1 ...")
        if shutil.which("h2load"):
            rate = extproc_h2load(mesh.router_address, body, args.exchanges, 4, 64)
            tool = "h2load"
        else:
            raise SystemExit("h2load not found: apt-get install nghttp2-client")
        results["extproc_turns_per_s"] = rate
    finally:
        mesh.stop()

    ttft = results["ttft_ms"]
    assert isinstance(ttft, dict)
    print(f"\nmesh overhead ({args.turns} turns per path, 64-word prompts, small model)\n")
    print(
        table(
            ["path", "TTFT p50 ms", "TTFT p99 ms"],
            [
                ["direct to engine", ttft["direct_p50"], ttft["direct_p99"]],
                ["Envoy + router", ttft["mesh_p50"], ttft["mesh_p99"]],
                ["added", ttft["added_p50"], ttft["mesh_p99"] - ttft["direct_p99"]],
            ],
        )
    )
    print(
        f"\nrouter ext_proc on one core ({tool}, {args.exchanges} exchanges): "
        f"{results['extproc_turns_per_s']:.0f} turns/s"
    )
    write_json(args.json, results)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--turns", type=int, default=100, help="TTFT samples per path")
    p.add_argument("--exchanges", type=int, default=20000, help="ext_proc exchanges to time")
    p.add_argument("--json", help="also write the figures to this file")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
