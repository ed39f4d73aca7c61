"""What the mesh adds, and what trust (API keys + mutual TLS) adds to that, side by side.

Two meshes run at once from `mesh-bench.yaml`: "secure" as `switchyard up` runs it (an API key
checked per turn, mutual TLS on every internal hop) and "open" (`auth.enabled: false`,
`tls.plaintext: true`), each with one small engine.

1. TTFT: the same prompts sent in turn to each engine directly (with the operator certificate
   where TLS is on) and through each mesh's Envoy (which asks the router over ext_proc, then
   proxies to the engine), one turn at a time: each mesh's two paths back to back, which mesh and
   which path first alternating, with a pause between meshes longer than vLLM's CPU worker
   busy-waits after a step (else one engine's spin slows the other mesh's turns). Added TTFT
   is mesh minus direct per mesh; trust's cost is secure-added minus open-added. Short (64
   words) and long (700) prompts. From each mesh turn's spans on the client's clock, where its
   time goes hop by hop (`_hops.py`): Envoy, the router's and the safety filter's ext_proc
   calls, the engine's own queue + prefill, and the way back to the first visible text (the
   safety filter holds back what may still become an entity).
2. CPU per turn: a closed loop of 4 streams of 8-token turns through each mesh; each process's
   CPU-µs per turn (Envoy, router, safety, the engine's front process and its vLLM core).
3. ext_proc throughput: each router in turn pinned to core 0 and driven with exactly the exchange
   Envoy has with it per turn (request headers with the API key, then the buffered
   GenerateRequest body, answered with routing headers) by `h2load` on core 1 (Debian's
   nghttp2-client) through a local Envoy TCP proxy on core 1 that does what the mesh's Envoy
   does: mutual TLS to the secure router with Envoy's certificate, plaintext to the open one;
   blocks alternate between the two routers, and the median block is reported.

    .venv/bin/python benchmarks/mesh_overhead.py [--turns 100] [--words 64 700] [--blocks 4]
        [--load-seconds 15] [--load-clients 4] [--json out.json]

Figures, not pass/fail. Goals: ≤ 2 ms p50 added TTFT, ≥ 1,500 turns/s on one core; auth and TLS
together ≤ 0.5 ms p50.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile, prompts, say, table, write_json
from _hops import HOPS, CpuMeter, Mark, breakdown, per_turn_us

from services.common.pki import ROUTER, spiffe_id
from services.common.tls import TlsFiles
from services.mesh.up import Mesh, free_port

HERE = Path(__file__).resolve().parent


async def ttft_once(client, text: str) -> tuple[float, Mark]:  # type: ignore[no-untyped-def]
    """TTFT of one 4-token turn as the client sees it (the first text), and its wall-clock
    mark; the turn is read to its end, so the engine records all its phases."""
    from services.mesh.client import make_request

    call_ns = time.time_ns()
    start = time.perf_counter()
    ttft, first_ns = float("nan"), 0
    stream = client.stream(make_request(text, max_tokens=4, temperature=0.0))
    async with contextlib.aclosing(stream) as messages:
        async for msg in messages:
            if msg.HasField("delta") and not first_ns:
                ttft, first_ns = time.perf_counter() - start, time.time_ns()
    return float(ttft), Mark(call_ns, first_ns)


PATHS = ("secure direct", "secure mesh", "open direct", "open mesh")


async def measure_ttft(
    meshes: dict[str, Mesh], turns: int, gap: float, words: int
) -> tuple[dict[str, list[float]], dict[str, list[Mark]]]:
    """TTFT per path, and the mesh paths' marks (for the per-hop breakdown)."""
    from services.mesh.client import MeshClient

    out: dict[str, list[float]] = {p: [] for p in PATHS}
    marks: dict[str, list[Mark]] = {name: [] for name in meshes}
    clients: dict[str, MeshClient] = {}
    for name, mesh in meshes.items():
        # Direct to the engine: the operator's certificate (None in the plaintext mesh).
        clients[f"{name} direct"] = MeshClient.connect(
            mesh.engines[0].address, tls=mesh.operator_tls(), resume=None
        )
        clients[f"{name} mesh"] = MeshClient.connect(mesh.endpoint, key=mesh.dev_key, resume=None)
    try:
        for client in clients.values():  # warm every path
            for t in prompts(5, 32, seed=7):
                await ttft_once(client, t)
        names = list(meshes)
        for i, text in enumerate(prompts(turns, words, seed=11 + words)):
            # Each mesh's two paths back to back, the mesh first and the path first alternating;
            # between meshes a pause outlasting vLLM's CPU worker busy-waiting after a step
            # (~1 s), so that one engine's spin does not slow the other mesh's turn.
            for name in names[i % 2 :] + names[: i % 2]:
                await asyncio.sleep(gap)
                paths = ("direct", "mesh") if (i // 2) % 2 == 0 else ("mesh", "direct")
                for path in (f"{name} {p}" for p in paths):
                    # Distinct prompts per path, so none rides another's prefix cache.
                    ttft, mark = await ttft_once(clients[path], f"{path} {text}")
                    out[path].append(ttft)
                    if path.endswith("mesh"):
                        marks[name].append(mark)
    finally:
        for client in clients.values():
            await client.close()
    return out, marks


async def measure_load(mesh: Mesh, seconds: float, clients: int) -> dict[str, Any]:
    """A closed loop of `clients` streams of 8-token turns through the mesh for `seconds`:
    turns/s and each process's CPU-µs per turn."""
    from services.mesh.client import MeshClient, make_request

    assert mesh.router is not None and mesh.safety is not None and mesh.envoy is not None
    meter = CpuMeter(
        {
            "envoy": mesh.envoy.pid,
            "router": mesh.router.pid,
            "safety": mesh.safety.pid,
            "engine front": mesh.engines[0].pid,
        }
    )
    client = MeshClient.connect(mesh.endpoint, key=mesh.dev_key, resume=None)
    texts = prompts(4096, 64, seed=5)
    done = 0
    stop = time.perf_counter() + 2.0  # warm-up

    async def loop(k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < stop:
            req = make_request(f"load {k} {texts[i % len(texts)]}", max_tokens=8, temperature=0.0)
            async with contextlib.aclosing(client.stream(req)) as messages:
                async for _ in messages:
                    pass
            done += 1
            i += clients

    try:
        await asyncio.gather(*(loop(k) for k in range(clients)))  # warm
        stop = time.perf_counter() + seconds
        done = 0
        before, start = meter.read(), time.perf_counter()
        await asyncio.gather(*(loop(k) for k in range(clients)))
        after, wall = meter.read(), time.perf_counter() - start
    finally:
        await client.close()
    return {"turns": done, "turns_per_s": done / wall, "cpu_us": per_turn_us(before, after, done)}


def extproc_body(prompt: str, key: str) -> bytes:
    """The two messages Envoy sends per turn, as one gRPC request body (two frames)."""
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

    from services.common.extproc import GENERATE_PATH
    from services.common.frames import encode_frame as grpc_frame
    from services.mesh.client import bearer, make_request

    values = [(":path", GENERATE_PATH), ("content-type", "application/grpc"), *bearer(key)]
    headers = ext.ProcessingRequest(
        request_headers=ext.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values]
            )
        )
    )
    req = make_request(prompt, max_tokens=16)
    body = ext.ProcessingRequest(
        request_body=ext.HttpBody(body=grpc_frame(req.SerializeToString()), end_of_stream=True)
    )
    return grpc_frame(headers.SerializeToString()) + grpc_frame(body.SerializeToString())


def proxy_bootstrap(listen_port: int, router_addr: str, tls: TlsFiles | None) -> dict[str, Any]:
    """A static Envoy that forwards TCP to the router, as Envoy's ext_proc client would reach
    it: mutual TLS with Envoy's certificate (ALPN h2), or plaintext."""
    host, port = router_addr.rsplit(":", 1)
    cluster: dict[str, Any] = {
        "name": "router",
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": "router",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": host, "port_value": int(port)}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if tls is not None:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": str(tls.cert)},
                            "private_key": {"filename": str(tls.key)},
                        }
                    ],
                    "validation_context": {  # the router's identity, as the mesh's Envoy checks
                        "trusted_ca": {"filename": str(tls.ca)},
                        "match_typed_subject_alt_names": [
                            {"san_type": "URI", "matcher": {"exact": spiffe_id(ROUTER)}}
                        ],
                    },
                },
            },
        }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "bench_proxy",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": listen_port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.tcp_proxy",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters."
                                        "network.tcp_proxy.v3.TcpProxy",
                                        "stat_prefix": "bench",
                                        "cluster": "router",
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [cluster],
        }
    }


@contextlib.contextmanager
def tcp_proxy(router_addr: str, tls: TlsFiles | None, workdir: Path) -> Iterator[str]:
    """A local Envoy on core 1 in front of the router; yields its plaintext address."""
    from services.router.xds.envoy_proc import find_envoy_binary

    port = free_port()
    cfg = workdir / f"proxy-{port}.yaml"
    cfg.write_text(yaml.safe_dump(proxy_bootstrap(port, router_addr, tls)))
    cmd = ["taskset", "-c", "1", str(find_envoy_binary()), "-c", str(cfg), "--concurrency", "1"]
    cmd += ["--base-id", str(port), "-l", "warning"]
    log = (workdir / f"proxy-{port}.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the benchmark's Envoy proxy exited; see {log.name}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the benchmark's Envoy proxy did not start")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def extproc_h2load(target: str, body: bytes, requests: int, clients: int, streams: int) -> float:
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
        f.write(body)
    cmd = ["taskset", "-c", "1", "h2load", "-n", str(requests), "-c", str(clients)]
    cmd += ["-m", str(streams), "-d", f.name]
    cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    cmd += [f"http://{target}/envoy.service.ext_proc.v3.ExternalProcessor/Process"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    ok = re.search(r"(\d+) succeeded", out)
    if not m or not ok or int(ok.group(1)) != requests:
        raise RuntimeError(f"h2load did not complete every exchange:\n{out}")
    return float(m.group(1))


async def check_extproc_answer(target: str, body: bytes) -> None:
    """One exchange by a real gRPC client through the proxy: the router must answer with
    routing headers (so the key and the certificate were accepted)."""
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

    async with grpc.aio.insecure_channel(target) as ch:
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


def bench_config(workdir: Path, secure: bool) -> Path:
    """mesh-bench.yaml as `up` runs it ("secure"), or with API keys and TLS off ("open"). In
    both, the engine's capacity is unbounded: h2load's exchanges never reach it, and flow
    control would hold them once the pool looked saturated (its admission path still runs)."""
    data = yaml.safe_load((HERE / "mesh-bench.yaml").read_text())
    if not secure:
        data["auth"] = {"enabled": False}
        data["tls"] = {"plaintext": True}
    data["saturation"] = {"capacity": {"cpu": 10**9}}
    engines = data["pools"][0]["engines"]
    for group in engines:
        group["config"] = str((HERE / group["config"]).resolve())
    path = workdir / f"mesh-bench-{'secure' if secure else 'open'}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def main_async(args: argparse.Namespace) -> int:
    from services.mesh.models import default_models_dir, init_models

    models = default_models_dir()
    init_models(models, ["small"], progress=lambda m: say(f"[models] {m}"))
    os.environ["SWITCHYARD_MODELS"] = str(models)
    if not shutil.which("h2load"):
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    meshes = {  # every turn traced, as `up` does, into a directory per mesh
        "secure": Mesh(
            bench_config(workdir, True), free_ports=True, say=say, traces_dir=workdir / "t-secure"
        ),
        "open": Mesh(
            bench_config(workdir, False), free_ports=True, say=say, traces_dir=workdir / "t-open"
        ),
    }
    results: dict[str, Any] = {"words": args.words}
    try:
        for name, mesh in meshes.items():
            say(f"[bench] starting the {name} mesh ...")
            mesh.start()
        for words in args.words:
            say(f"[bench] TTFT, {words}-word prompts: {args.turns} turns per path, rotating ...")
            t, marks = await measure_ttft(meshes, args.turns, args.gap, words)
            ttft = {p: {"p50": percentile(v, 50) * 1e3, "p99": percentile(v, 99) * 1e3}
                    for p, v in t.items()}  # fmt: skip
            r: dict[str, Any] = {"ttft_ms": ttft}
            for name in meshes:
                r[f"{name}_added_ms"] = {
                    q: ttft[f"{name} mesh"][q] - ttft[f"{name} direct"][q] for q in ("p50", "p99")
                }
            r["trust_added_ms"] = {
                q: r["secure_added_ms"][q] - r["open_added_ms"][q] for q in ("p50", "p99")
            }
            await asyncio.sleep(3)  # the services export spans every second
            r["hops_ms"] = {name: breakdown(workdir / f"t-{name}", marks[name]) for name in meshes}
            results[f"{words}_words"] = r
        say(f"[bench] load: {args.load_clients} clients x {args.load_seconds:g} s per mesh ...")
        results["load"] = {
            name: await measure_load(mesh, args.load_seconds, args.load_clients)
            for name, mesh in meshes.items()
        }
        samples: dict[str, list[float]] = {name: [] for name in meshes}
        with contextlib.ExitStack() as stack:
            proxies = {}
            for name, mesh in meshes.items():
                assert mesh.router is not None and mesh.cfg is not None
                body = extproc_body(prompts(1, 64, seed=3)[0], mesh.dev_key)
                tls = mesh.cfg.tls.files("envoy")
                proxy = stack.enter_context(tcp_proxy(mesh.router_address, tls, workdir))
                proxies[name] = (proxy, body)
                await check_extproc_answer(*proxies[name])
            for b in range(args.blocks):
                for name in list(meshes)[b % 2 :] + list(meshes)[: b % 2]:
                    router = meshes[name].router
                    assert router is not None
                    os.sched_setaffinity(router.pid, {0})
                    say(f"[bench] ext_proc block {b + 1}/{args.blocks}, {name}: router on core 0, "
                        "h2load + proxy on core 1 ...")  # fmt: skip
                    proxy, body = proxies[name]
                    samples[name].append(extproc_h2load(proxy, body, args.exchanges, 4, 64))
                    os.sched_setaffinity(router.pid, set(range(os.cpu_count() or 1)))
        rates = {name: statistics.median(v) for name, v in samples.items()}
        results["extproc_blocks"] = samples
        results["extproc_turns_per_s"] = rates
    finally:
        for mesh in meshes.values():
            mesh.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, args, rates, samples)
    write_json(args.json, results)
    return 0


def report(
    results: dict[str, Any],
    args: argparse.Namespace,
    rates: dict[str, float],
    samples: dict[str, list[float]],
) -> None:
    for words in args.words:
        r = results[f"{words}_words"]
        ttft = r["ttft_ms"]
        print(f"\nmesh overhead, {words}-word prompts ({args.turns} turns per path, small model)\n")
        rows: list[list[Any]] = [[p, ttft[p]["p50"], ttft[p]["p99"]] for p in PATHS]
        for name in ("secure", "open"):
            added = r[f"{name}_added_ms"]
            rows.append([f"added by the {name} mesh", added["p50"], added["p99"]])
        trust = r["trust_added_ms"]
        rows.append(["added by keys + mTLS", trust["p50"], trust["p99"]])
        print(table(["path", "TTFT p50 ms", "TTFT p99 ms"], rows))
        hops = r["hops_ms"]
        print(f"\nwhere a mesh turn's time goes, {words}-word prompts (p50 ms per hop, from each "
              "turn's spans on the client's clock):\n")  # fmt: skip
        names = [row for row, _, _ in HOPS] + ["mesh total (all but the engine's queue + prefill)"]
        print(table(
            ["hop", *(f"{n} ({hops[n]['turns']} turns)" for n in hops)],
            [[row, *(hops[n].get(row, float("nan")) for n in hops)] for row in names],
        ))  # fmt: skip
    load = results["load"]
    procs = list(next(iter(load.values()))["cpu_us"])
    print(f"\nCPU per turn under load ({args.load_clients} clients, 8-token turns, "
          f"{args.load_seconds:g} s per mesh), CPU-µs per turn:\n")  # fmt: skip
    print(table(
        ["mesh", "turns/s", *procs, "mesh (envoy + router + safety)"],
        [[n, v["turns_per_s"], *(v["cpu_us"][p] for p in procs),
          sum(v["cpu_us"][p] for p in ("envoy", "router", "safety"))] for n, v in load.items()],
    ))  # fmt: skip
    print(f"\nrouter ext_proc on one core (h2load via an Envoy TCP proxy, median of "
          f"{args.blocks} blocks of {args.exchanges} exchanges per mesh, alternating): "
          f"secure {rates['secure']:.0f} turns/s, open {rates['open']:.0f} turns/s "
          f"({(rates['secure'] / rates['open'] - 1) * 100:+.1f}%)")  # fmt: skip
    for name, v in samples.items():
        print(f"  {name} blocks: " + ", ".join(f"{x:.0f}" for x in v))


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--turns", type=int, default=100, help="TTFT samples per path and size")
    p.add_argument(
        "--words", type=int, nargs="+", default=[64, 700], help="prompt sizes for TTFT (words)"
    )
    p.add_argument("--load-seconds", type=float, default=15.0, help="load phase per mesh")
    p.add_argument("--load-clients", type=int, default=4, help="concurrent streams in it")
    p.add_argument("--exchanges", type=int, default=10000, help="ext_proc exchanges per block")
    p.add_argument("--blocks", type=int, default=4, help="h2load blocks per mesh, alternating")
    p.add_argument(
        "--gap", type=float, default=1.2, help="seconds idle before each mesh's pair of turns"
    )
    p.add_argument("--json", help="also write the figures to this file")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
