"""Run the safety service: Envoy's ext_proc (the streamed response scrub) and the
`switchyard.v1.Safety` API on one gRPC address, plus `/metrics`."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from services.common.looplag import watch_loop
from services.common.metrics import start_metrics_server
from services.common.pki import ENVOY, OPERATOR, SAFETY
from services.common.progress import Progress
from services.common.server import (
    create_server,
    host_port,
    install_signal_handlers,
    write_ready_file,
)
from services.common.tls import AccessPolicy
from services.common.tracing import setup_tracing
from services.safety import metrics as m
from services.safety import service
from services.safety.cache_feed import CacheFeed
from services.safety.config import SafetyConfig
from services.safety.extproc import SafetyExtProc

log = logging.getLogger(__name__)

SERVICE_NAMES = [service.SERVICE_NAME, "envoy.service.ext_proc.v3.ExternalProcessor"]
# The loop monitor's tick, and the lag past which a stall is logged: Envoy waits
# `envoy.ext_proc_timeout_seconds` (2 s by default) for each answer, then fails the turn.
TICK_SECONDS = 0.1
STALL_LOG_SECONDS = 0.5


def _on_tick(lag: float) -> None:
    m.LOOP_LAG.observe(lag)
    if lag > STALL_LOG_SECONDS:
        log.warning("the safety filter's event loop stalled for %.2fs", lag)


# Who may call what: Envoy (every turn), operators (the Safety API, which takes the tenant from
# its caller: only a trusted identity may name one).
POLICY = AccessPolicy(
    {
        "/envoy.service.ext_proc.v3.ExternalProcessor/": {ENVOY},
        f"/{service.SERVICE_NAME}/": {OPERATOR},
        "/grpc.reflection.": {OPERATOR},
    }
)


async def serve(
    cfg: SafetyConfig, ready_file: Path | None = None, response_cache: str = ""
) -> None:
    """`response_cache`: the router (HOST:PORT) whose response cache completed cacheable turns
    are sent to; empty: none are."""
    stop = asyncio.Event()
    install_signal_handlers(stop)
    progress = Progress("safety")
    with progress.phase("compiling recognizers"):
        recognizers = cfg.recognizers
    tracing = setup_tracing("switchyard-safety", cfg.tracing)
    feed = CacheFeed(response_cache, cfg.tls.files(SAFETY)) if response_cache else None
    extproc = SafetyExtProc(cfg, tracing.tracer(__name__) if tracing.enabled else None, feed)
    server = await create_server(
        cfg.listen,
        [service.SafetyService(cfg).add_to_server, extproc.add_to_server],
        SERVICE_NAMES,
        tls=cfg.tls.files(SAFETY),
        policy=POLICY,
        health_listen=cfg.health_listen,
    )
    host, _ = host_port(cfg.listen)
    address = f"{host}:{server.port}"
    metrics_host, metrics_port = host_port(cfg.metrics_listen)
    metrics_port = start_metrics_server(metrics_host, metrics_port)
    await server.start()
    await server.set_serving(True)
    watcher = asyncio.create_task(watch_loop(TICK_SECONDS, _on_tick))
    if ready_file is not None:
        write_ready_file(
            ready_file,
            {
                "address": address,
                "grpc_port": server.port,
                "metrics_port": metrics_port,
                "pid": os.getpid(),
            },
        )
    categories = ", ".join(sorted(cfg.categories)) or "none"
    progress.say(
        f"serving on {address} (ext_proc, Safety API); "
        f"metrics on http://{metrics_host}:{metrics_port}/metrics; "
        f"{len(recognizers)} recognizers, categories: {categories}"
    )
    await stop.wait()
    progress.say("stopping")
    watcher.cancel()
    await server.stop(2.0)
    if feed is not None:
        await feed.close()
    await asyncio.to_thread(tracing.shutdown)
    progress.say("stopped")
