"""Run one engine: bind gRPC, load vLLM (with progress), serve, and drain on SIGTERM.

Start-up order: the gRPC port is bound first (its port names the engine when no engine_id is
configured), then vLLM loads and warms up while nothing is served, then health turns SERVING.
On SIGTERM/SIGINT: health NOT_SERVING, new turns get UNAVAILABLE, in-flight streams get
`drain_grace_seconds` to finish (then they are aborted with FINISH_REASON_ABORTED), and the
process exits.

If vLLM's engine core dies (its process is killed, a CUDA error), the engine cannot serve again:
health turns NOT_SERVING, the router gets a `serving=false` report, turns in flight end with
UNAVAILABLE, and the process exits with status `EXIT_ENGINE_DIED` so that its supervisor
(`switchyard up`, Kubernetes) starts a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from services.common.metrics import start_metrics_server
from services.common.pki import ENGINE, ENVOY, OPERATOR, ROUTER
from services.common.progress import Progress
from services.common.server import (
    Server,
    create_server,
    host_port,
    install_signal_handlers,
    write_ready_file,
)
from services.common.tls import AccessPolicy
from services.common.tracing import Tracing, setup_tracing
from services.engine import control, inference
from services.engine.admission import Admission
from services.engine.config import EngineConfig
from services.engine.kv_events import KvEventForwarder, ipc_endpoint
from services.engine.load import LoadTracker
from services.engine.metrics import EngineMetrics
from services.engine.registrar import Registrar, Registrations
from services.engine.runtime import Runtime
from switchyard.v1 import engine_pb2, inference_pb2

log = logging.getLogger(__name__)

# Extra seconds the gRPC server gives streams to flush their Final after the drain.
STOP_GRACE_SECONDS = 5.0
# Who may call what (roles of the callers' certificates): turns come only through Envoy (and
# from operators, who reach engines directly); the router drains them.
POLICY = AccessPolicy(
    {
        "/switchyard.v1.Inference/": {ENVOY, OPERATOR},
        "/switchyard.v1.EngineControl/": {ROUTER, OPERATOR},
        "/grpc.reflection.": {OPERATOR},
    }
)

# How often the engine checks that vLLM's engine core is alive, and the exit status when not.
CORE_CHECK_SECONDS = 0.5
EXIT_ENGINE_DIED = 3


@dataclass
class EngineService:
    """A running engine service and its parts."""

    cfg: EngineConfig
    engine_id: str
    server: Server
    metrics_port: int
    runtime: Runtime
    tracker: LoadTracker
    admission: Admission
    control: control.EngineControlService
    kv_task: asyncio.Task[None] | None
    tracing: Tracing
    registrar_task: asyncio.Task[None] | None = None
    died: bool = False  # vLLM's engine core died: this process must be replaced

    @property
    def address(self) -> str:
        host, _ = host_port(self.cfg.listen)
        return self.cfg.advertise_address or f"{host}:{self.server.port}"

    async def shutdown(self, grace: float) -> None:
        """Drain for up to `grace` seconds, then stop serving and shut vLLM down.

        The router learns of the drain from the load reports on the registration stream, and
        drops the engine when the stream closes at the end."""
        self.control.drain(grace)
        await self.server.set_serving(False)
        await self.admission.wait_idle(grace + STOP_GRACE_SECONDS)
        await self.server.stop(STOP_GRACE_SECONDS)
        for task in (self.registrar_task, self.kv_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.runtime.shutdown()
        await asyncio.to_thread(self.tracing.shutdown)

    async def watch_core(self, on_death: asyncio.Event) -> None:
        """Until vLLM's engine core dies: then stop serving, say so, and set `on_death`."""
        # vLLM only exposes a flag (AsyncLLM.errored), no event to wait on: poll it.
        while not self.runtime.dead:  # noqa: ASYNC110
            await asyncio.sleep(CORE_CHECK_SECONDS)
        self.died = True
        self.admission.loading = True  # refuse new turns (UNAVAILABLE) from now on
        self.tracker.set_flags(serving=False)
        await self.server.set_serving(False)
        on_death.set()


async def start_engine(cfg: EngineConfig, progress: Progress | None = None) -> EngineService:
    """Bind, load and start an engine; returns once it is SERVING."""
    runtime_ref: list[Runtime | None] = [None]
    host, _ = host_port(cfg.listen)
    # Servicers are added after binding, since the bound port may name the engine.
    tls = cfg.tls.files(ENGINE)
    server = await create_server(
        cfg.listen,
        [],
        [inference.SERVICE_NAME, control.SERVICE_NAME],
        tls=tls,
        policy=POLICY,
        health_listen=cfg.health_listen,
    )
    engine_id = cfg.engine_id or f"{cfg.pool}-{server.port}"
    progress = progress or Progress(f"engine {engine_id}")
    tracker = LoadTracker(engine_id, cfg.load_report_min_interval_seconds)
    metrics = EngineMetrics(cfg.pool, engine_id, cfg.model.served_name)
    admission = Admission(engine_id, tracker, metrics)
    served_by = inference_pb2.ServedBy(
        pool=cfg.pool,
        engine=engine_id,
        model=cfg.model.served_name,
        model_version=cfg.model_version(),
        accelerator=cfg.accelerator,
    )
    tracing = setup_tracing(
        "switchyard-engine",
        cfg.tracing,
        resource_attributes={"service.instance.id": engine_id, "switchyard.pool": cfg.pool},
    )
    inference_svc = inference.InferenceService(
        runtime_ref, admission, metrics, served_by, tracing.tracer(__name__), tracker.publish_usage
    )
    control_svc = control.EngineControlService(
        cfg, engine_id, runtime_ref, tracker, admission, server.set_serving
    )
    inference_svc.add_to_server(server.grpc)
    control_svc.add_to_server(server.grpc)

    metrics_host, metrics_port = host_port(cfg.metrics_listen)
    metrics_port = start_metrics_server(metrics_host, metrics_port)

    kv_task = None
    kv_endpoint = None
    if cfg.kv_events:
        kv_endpoint = ipc_endpoint(engine_id)

        def on_batch(batch: engine_pb2.KvCacheEvents) -> None:
            metrics.kv_event_batches.inc()
            tracker.publish_kv(batch)

        forwarder = KvEventForwarder(kv_endpoint, on_batch)
        kv_task = asyncio.create_task(forwarder.run(), name="kv-events")

    with progress.phase(f"loading model {cfg.model.served_name} ({cfg.model.path})"):
        runtime = Runtime.build(cfg, tracker, kv_endpoint)
    progress.say(
        f"vLLM {runtime.info.vllm_version}: context {runtime.info.max_model_len} tokens, "
        f"KV cache {runtime.info.kv_num_blocks} blocks x {runtime.info.kv_block_size} tokens"
    )
    if cfg.warmup:
        with progress.phase("warming up"):
            await runtime.warmup()
    runtime_ref[0] = runtime
    # Replays to a router stay within what the cache can hold (lost removals aside).
    tracker.ledger.max_blocks = int(runtime.info.kv_num_blocks * 1.25) or tracker.ledger.max_blocks
    admission.loading = False
    tracker.set_flags(serving=True)
    await server.start()
    await server.set_serving(True)
    progress.say(
        f"serving {cfg.model.served_name} (pool {cfg.pool}, {cfg.accelerator}) on "
        f"{host}:{server.port}, metrics on http://{metrics_host}:{metrics_port}/metrics"
    )
    svc = EngineService(
        cfg,
        engine_id,
        server,
        metrics_port,
        runtime,
        tracker,
        admission,
        control_svc,
        kv_task,
        tracing,
    )
    if cfg.router:
        registrar = Registrations(
            cfg.router,
            lambda target: Registrar(
                target, svc.address, control_svc.info, tracker, cfg.heartbeat_seconds, tls
            ),
        )
        svc.registrar_task = asyncio.create_task(registrar.run(), name="registrar")
        progress.say(f"registering with router {cfg.router}")
    return svc


async def serve(cfg: EngineConfig, ready_file: Path | None = None) -> int:
    """Run the engine until SIGTERM/SIGINT, then drain and exit; returns the exit status
    (`EXIT_ENGINE_DIED` when vLLM's engine core died)."""
    stop = asyncio.Event()
    install_signal_handlers(stop)
    svc = await start_engine(cfg)
    watchdog = asyncio.create_task(svc.watch_core(stop), name="core-watchdog")
    if ready_file is not None:
        write_ready_file(
            ready_file,
            {
                "engine_id": svc.engine_id,
                "pool": cfg.pool,
                "pid": os.getpid(),
                "address": svc.address,
                "grpc_port": svc.server.port,
                "metrics_port": svc.metrics_port,
            },
        )
    await stop.wait()
    watchdog.cancel()
    progress = Progress(f"engine {svc.engine_id}")
    if svc.died:
        log.error("vLLM's engine core died; this engine cannot serve again")
        progress.say(
            f"vLLM's engine core died: not serving; {len(svc.admission.in_flight)} turn(s) in "
            f"flight end with UNAVAILABLE; exiting with status {EXIT_ENGINE_DIED} to be replaced"
        )
        await svc.shutdown(0.0)
        progress.say("stopped")
        return EXIT_ENGINE_DIED
    progress.say(
        f"draining: {len(svc.admission.in_flight)} turn(s) in flight, "
        f"grace {cfg.drain_grace_seconds:g}s"
    )
    await svc.shutdown(cfg.drain_grace_seconds)
    progress.say("stopped")
    return 0
