"""Run the router: registry, scheduler, Envoy ext_proc, Router/Admin APIs and the xDS server,
all on one gRPC address, plus `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from pathlib import Path

from services.common.errors import FailedPrecondition, SwitchyardError
from services.common.looplag import RunningClock, watch_loop
from services.common.metrics import start_metrics_server
from services.common.pki import AUTOSCALER, ENGINE, ENVOY, OPERATOR, ROUTER, SAFETY
from services.common.progress import Progress
from services.common.server import (
    create_server,
    host_port,
    install_signal_handlers,
    write_ready_file,
)
from services.common.tls import AccessPolicy
from services.common.tracing import setup_tracing
from services.router import api, extproc, keda, registry_service
from services.router import metrics as router_metrics
from services.router.auth.authenticator import Authenticator
from services.router.autoscale import Autoscaler, PoolBounds, TtftWindow, pool_signal
from services.router.config import (
    MeshConfig,
    ModelResolver,
    fallbacks,
    tier_selector,
    version_pool,
)
from services.router.kvindex import KvIndex
from services.router.publisher import XdsPublisher
from services.router.registry import Registry
from services.router.reload import LIVE_FIELDS, ConfigReloader
from services.router.response_cache import CachePutService, CacheReplay, ResponseCache, make_store
from services.router.routing import Limits, RoutingService, TokenizerCache
from services.router.scheduling.profile import load_profile
from services.router.scheduling.scheduler import Scheduler
from services.router.sessions import SessionTable
from services.router.tenancy.admission import Admission, make_ledger
from services.router.tenancy.flow import FlowControl
from services.router.tenancy.policy import PolicyStore
from services.router.versions import Versions
from services.router.xds import server as xds_server
from services.router.xds.cache import SnapshotCache
from services.safety.config import SafetyConfig
from services.safety.prompt import PromptPolicy
from switchyard.v1 import engine_pb2

log = logging.getLogger(__name__)


SERVICE_NAMES = [
    "switchyard.v1.Registry",
    "switchyard.v1.Router",
    "switchyard.v1.Admin",
    "envoy.service.ext_proc.v3.ExternalProcessor",
    "envoy.service.discovery.v3.AggregatedDiscoveryService",
    "switchyard.v1.Inference",  # the response cache's replay (Envoy routes hits here)
    "switchyard.v1.ResponseCache",
    keda.SERVICE_NAME,
]
# Who may call what (roles of the callers' certificates, services/common/pki.py).
POLICY = AccessPolicy(
    {
        "/envoy.service.ext_proc.v3.ExternalProcessor/": {ENVOY},
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/": {ENVOY},
        "/switchyard.v1.Registry/": {ENGINE},
        "/switchyard.v1.Inference/": {ENVOY},
        "/switchyard.v1.ResponseCache/": {SAFETY},
        f"/{keda.SERVICE_NAME}/": {AUTOSCALER, OPERATOR},
        "/switchyard.v1.Router/": {OPERATOR},
        "/switchyard.v1.Admin/": {OPERATOR},
        "/grpc.reflection.": {OPERATOR},
    }
)
# The loop monitor's tick (it measures the event loop's lag), and every how many ticks it
# sweeps the registry (the stall measured meanwhile handed to the sweep).
TICK_SECONDS = 0.025
AUTOSCALE_SECONDS = 1.0  # how often each pool's desired engines are worked out
SWEEP_EVERY = 4


async def serve(
    cfg: MeshConfig,
    ready_file: Path | None = None,
    watch_config: Path | None = None,
    running_config: Path | None = None,
    *,
    safety: SafetyConfig | None = None,
) -> None:
    """Run the router; `watch_config`: the mesh config file whose model-routing fields it
    reloads live (services/router/reload.py), when `cfg` was read from another file
    (`running_config`, e.g. the copy `up` renders); `safety`: the safety policy (`cfg.safety`'s
    file), whose prompt part it applies before routing; None: prompts go on as sent."""
    stop = asyncio.Event()
    install_signal_handlers(stop)
    progress = Progress("router")

    with progress.phase("loading tokenizers"):
        tokenizers = TokenizerCache(cfg)
        tokenizers.preload()
    resolver = ModelResolver(cfg)
    index = KvIndex()
    registry = Registry(index=index, stale_after=cfg.router.stale_after_seconds)
    router_metrics.register(registry)
    scheduler = Scheduler(registry, index, SessionTable(), load_profile(cfg.router.profile))
    r = cfg.router
    limits = Limits(
        max_prompt_bytes=r.max_prompt_bytes,
        max_prompt_tokens=r.max_prompt_tokens,
        max_request_headers_kb=cfg.envoy.max_request_headers_kb,
        max_headers_count=cfg.envoy.max_headers_count,
        registration_grace_seconds=r.registration_grace_seconds,
    )
    versions = Versions()
    prompt_policy = None
    if safety is not None:  # the safety config's prompt policy, applied before routing
        with progress.phase("compiling the prompt policy"):
            prompt_policy = PromptPolicy(safety)
    routing = RoutingService(
        resolver,
        tokenizers,
        scheduler,
        registry,
        limits,
        versions=versions,
        prompt_policy=prompt_policy,
    )

    auth = Authenticator(cfg.auth)
    tracing = setup_tracing("switchyard-router", cfg.tracing)
    tls = cfg.tls.files(ROUTER)
    server = await create_server(
        cfg.router.listen,
        [],
        SERVICE_NAMES,
        tls=tls,
        policy=POLICY,
        health_listen=cfg.router.health_listen,
    )
    host, _ = host_port(cfg.router.listen)
    address = f"{host}:{server.port}"
    cache = SnapshotCache()
    publisher = XdsPublisher(cfg, registry, cache, cfg.router.advertise_address or address)

    router_id = f"router-{uuid.uuid4().hex[:8]}"
    policies = PolicyStore(cfg.tenants, set(cfg.auth.tiers))
    ledger = make_ledger(cfg.quotas)
    admission = Admission(cfg.quotas, policies, cfg.auth.tiers, ledger, router_id)
    running = RunningClock()
    flow = FlowControl(cfg.flow, cfg.saturation, registry, admission.label, clock=running)
    admission.attach_flow(flow)
    registry.on_load_listener = flow.kick  # a slot may have freed: release waiting turns
    registry.subscribe(flow.kick)  # engines came or went
    if cfg.quotas.redis_url:
        progress.say(f"quota ledger: redis at {cfg.quotas.redis_url}")

    ttft_windows: dict[str, TtftWindow] = {}

    def on_usage(engine_id: str, usage: engine_pb2.TurnUsage) -> None:
        """An engine's turn report: the quota ledger's, and when the turn ended, the version's
        metrics (and its canary rollback) and its pool's TTFT (the autoscaling signal)."""
        admission.on_usage(engine_id, usage)
        if usage.done and (engine := registry.get(engine_id)) is not None:
            ttft = usage.ttft.ToNanoseconds() / 1e9 if usage.HasField("ttft") else None
            versions.observe(engine.model, engine.model_version, usage, ttft)
            if ttft is not None:
                window = ttft_windows.get(engine.pool)
                if window is None:
                    window = ttft_windows[engine.pool] = TtftWindow(
                        cfg.autoscale.ttft_window_seconds
                    )
                window.add(ttft)

    reg = registry_service.RegistryService(
        registry,
        cfg.router.heartbeat_seconds,
        {p.name for p in cfg.pools},
        on_usage=on_usage,
        on_gone=admission.engine_gone,
        router_id=router_id,
    )
    reg.add_to_server(server.grpc)
    tracer = tracing.tracer(__name__) if tracing.enabled else None
    responses = None
    if cfg.response_cache.enabled:
        store = make_store(
            cfg.response_cache, cfg.quotas.redis_url, cfg.quotas.redis_timeout_seconds
        )
        responses = ResponseCache(cfg.response_cache, store)
        CacheReplay(responses, tracer).add_to_server(server.grpc)
        CachePutService(responses).add_to_server(server.grpc)
        progress.say(f"response cache: {store.name}")
    ext_proc = extproc.ExtProcService(routing, auth, admission, tracer, flow, responses)
    ext_proc.add_to_server(server.grpc)
    api.RouterService(routing, policies).add_to_server(server.grpc)
    admin = api.AdminService(
        cfg, resolver, registry, cache, reg.router_id, auth, tls, admission, versions
    )
    admin.response_cache = responses
    admin.add_to_server(server.grpc)

    def configured_engines(pool: str) -> PoolBounds:
        """A pool the autoscale section does not name keeps the engines its config starts."""
        count = sum(g.count for p in admin.config.pools if p.name == pool for g in p.engines)
        return PoolBounds.model_validate({"min_engines": count, "max_engines": max(1, count)})

    autoscaler = Autoscaler(cfg.autoscale, configured_engines)
    admin.autoscaler = autoscaler
    keda.KedaScaler(
        lambda: autoscaler.last, lambda: [p.name for p in admin.config.pools]
    ).add_to_server(server.grpc)

    def apply_routing(reloaded: MeshConfig) -> None:
        """The config's model routing and pools (at start, and reloaded: swapped in between two
        turns): only its live fields, over the running config (a reloaded file is the one `up`
        was given, without the ports and paths it rendered). Tiers prefer pools with room, and
        saturated models degrade: the flow control's count. A pool may go only once no engine
        of it is registered (its cluster leaves Envoy's config with it: turns in flight there
        would break)."""
        new = admin.config.model_copy(update={k: getattr(reloaded, k) for k in LIVE_FIELDS})
        gone = {p.name for p in admin.config.pools} - {p.name for p in new.pools}
        busy = sorted(p for p in gone if registry.engines(p))
        if busy:
            raise FailedPrecondition(
                f"pools {', '.join(busy)} still have engines registered: drain and stop them "
                "before removing their pools; nothing was applied"
            )
        tokenizers.update(new)
        # A new model's tokenizer loads in a worker thread, not on the first turn's loop.
        asyncio.get_running_loop().run_in_executor(None, tokenizers.preload)
        reg.pools = {p.name for p in new.pools}  # engines of a new pool may register
        publisher.use_config(new)  # Envoy gets the new pools' clusters and routes over xDS
        admin.config = new
        resolver = ModelResolver(new)
        tiers = tier_selector(new) if new.tiers else None
        degrade = fallbacks(new) if new.fallbacks else None
        for part in (tiers, degrade):
            if part is not None:
                part.room = flow.free_slots
        routing.resolver, routing.tiers, routing.fallbacks = resolver, tiers, degrade
        admin.use_resolver(resolver)
        versions.configure(new.versions, lambda model, v: version_pool(new, model, v))

    apply_routing(cfg)
    if watch_config is not None:
        admin.reloader = ConfigReloader(watch_config, apply_routing, running_config)
        try:  # a router restarted after an edit of the watched file: apply it now
            if changed := admin.reloader.reload():
                log.info("config applied from %s: %s", watch_config, ", ".join(changed))
        except SwitchyardError as e:
            log.error("config reload refused: %s", e)
    xds_server.add_to_server(server.grpc, cache)

    metrics_host, metrics_port = host_port(cfg.router.metrics_listen)
    metrics_port = start_metrics_server(metrics_host, metrics_port)
    await server.start()
    await server.set_serving(True)

    # Engines (re)register within the grace: until then Envoy keeps the config it has.
    publisher.start(delay=r.registration_grace_seconds)

    ticks = 0
    stalled = 0.0

    def tick(lag: float) -> None:
        nonlocal ticks, stalled
        router_metrics.LOOP_LAG.observe(lag)
        if lag > 0.25:
            log.warning("the router's event loop stalled for %.2fs (not counted as silence)", lag)
        ticks += 1
        stalled += lag
        running.advance(TICK_SECONDS)
        if ticks % SWEEP_EVERY:
            return
        went, back = registry.sweep(stalled=stalled)
        stalled = 0.0
        for engine_id in went:
            router_metrics.STALE_CHANGES.labels("went_stale").inc()
            log.warning(
                "engine %s silent for more than %gs; not routable until it reports",
                engine_id,
                registry.stale_after,
            )
        for engine_id in back:
            router_metrics.STALE_CHANGES.labels("recovered").inc()
            log.info("engine %s reports again; routable", engine_id)

    async def autoscale() -> None:
        while True:
            signals = {
                p.name: pool_signal(
                    registry.routable(p.name),
                    flow.saturation,
                    p.accelerator,
                    running=flow.in_flight(p.name),
                    queued=flow.queued(pool=p.name),
                    ttft=ttft_windows.get(p.name),
                )
                for p in admin.config.pools
            }
            autoscaler.evaluate(signals)
            await asyncio.sleep(AUTOSCALE_SECONDS)

    sweeper = asyncio.create_task(watch_loop(TICK_SECONDS, tick), name="loop-monitor")
    settling = asyncio.create_task(admission.run(), name="quota-settlement")
    tasks = [sweeper, settling, asyncio.create_task(autoscale(), name="autoscale")]
    if admin.reloader is not None and cfg.router.config_poll_seconds > 0:
        watching = admin.reloader.watch(cfg.router.config_poll_seconds)
        tasks.append(asyncio.create_task(watching, name="config-watch"))
    if ready_file is not None:
        write_ready_file(
            ready_file,
            {
                "address": address,
                "grpc_port": server.port,
                "metrics_port": metrics_port,
                "pid": os.getpid(),
                "router_id": reg.router_id,
            },
        )
    progress.say(
        f"serving on {address} (registry, ext_proc, xDS, admin); "
        f"metrics on http://{metrics_host}:{metrics_port}/metrics; "
        f"pools: {', '.join(p.name for p in cfg.pools)}"
    )
    await stop.wait()
    progress.say("stopping")
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await ledger.close()
    await server.stop(2.0)
    await asyncio.to_thread(tracing.shutdown)
    progress.say("stopped")
