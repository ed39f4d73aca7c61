"""`switchyard`: the command line of the mesh.

switchyard up [--chat PROMPT]         run the whole mesh locally (router, engines, Envoy)
switchyard chat [--session S] PROMPT  stream a reply through Envoy
switchyard status                     pools, engines, load, hit rate, xDS ACK/NACK, processes
switchyard admin drain|undrain ENGINE take an engine out of / back into rotation
switchyard admin keys create|list|revoke   API keys (the secret is shown once)
switchyard admin tenants set|list|reset    quotas, weights, tiers, cache groups (live)
switchyard admin reload               apply edited model routing (aliases, tiers, fallbacks)
switchyard admin versions [MODEL [V=W...]]  model versions (canaries): weights, rollbacks
switchyard admin cache purge [--tenant T]   drop stored answers of the response cache
switchyard status --tenants           each tenant's policy, quota left, turns, tokens
switchyard engine --config FILE       run one engine (pool member) until SIGTERM
switchyard router --config FILE       run the router (registry, ext_proc, xDS, admin)
switchyard safety --config FILE       run the safety filter (ext_proc, Safety API)
switchyard trace [TRACE_ID]           a turn's spans as a waterfall (local traces)
switchyard generate --target ADDR P   stream a reply from any Inference endpoint
switchyard models init                generate the local test models (no network)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MESH_CONFIG = REPO_ROOT / "deploy" / "local" / "pools.yaml"
DEFAULT_ROUTER = "127.0.0.1:50051"
DEFAULT_ENDPOINT = "127.0.0.1:8080"


def _models_dir(arg: str | None) -> Path:
    from services.mesh.models import default_models_dir

    return Path(arg).expanduser().resolve() if arg else default_models_dir()


def _use_models_dir(path: Path) -> None:
    """Engine configs refer to models as ${SWITCHYARD_MODELS}/NAME."""
    os.environ["SWITCHYARD_MODELS"] = str(path)


def _operator_tls(args: argparse.Namespace) -> object:
    """The operator identity from the local PKI (or none with --plaintext): how the CLI calls
    the router's admin API and engines directly."""
    if getattr(args, "plaintext", False):
        return None
    from services.common.pki import OPERATOR
    from services.common.tls import TlsConfig, TlsFiles

    tls_dir = getattr(args, "operator_tls", None) or os.environ.get("SWITCHYARD_OPERATOR_TLS")
    if tls_dir:  # a Kubernetes TLS Secret's files (see deploy/k8s/README.md)
        d = Path(tls_dir).expanduser()
        files = TlsFiles(d / "ca.crt", d / "tls.crt", d / "tls.key")
        for path in (files.ca, files.cert, files.key):
            if not path.is_file():
                raise SystemExit(
                    f"--operator-tls {d}: no {path.name} there (ca.crt, tls.crt, tls.key)"
                )
        return files
    return TlsConfig.model_validate({}).files(OPERATOR)


def _api_key(args: argparse.Namespace) -> str:
    """--key, else $SWITCHYARD_API_KEY, else the development key `switchyard up` keeps."""
    if getattr(args, "key", None):
        return str(args.key)
    if os.environ.get("SWITCHYARD_API_KEY"):
        return os.environ["SWITCHYARD_API_KEY"]
    from services.mesh.up import default_dev_key_file

    try:
        return default_dev_key_file().read_text().strip()
    except OSError:
        return ""


def cmd_models_init(args: argparse.Namespace) -> int:
    from services.mesh.models import MODEL_SPECS, init_models

    dest = _models_dir(args.dir)
    unknown = sorted(set(args.names) - MODEL_SPECS.keys())
    if unknown:
        print(
            f"error: unknown model {unknown[0]!r}; known: {', '.join(MODEL_SPECS)}", file=sys.stderr
        )
        return 2
    paths = init_models(
        dest, args.names or None, force=args.force, progress=lambda m: print(m, file=sys.stderr)
    )
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    from services.common.errors import ConfigError
    from services.engine.config import load_engine_config

    _use_models_dir(_models_dir(args.models_dir))
    try:
        cfg = load_engine_config(args.config)
        overrides = {
            k: v
            for k, v in (
                ("listen", args.listen),
                ("engine_id", args.engine_id),
                ("router", args.router),
            )
            if v
        }
        if overrides:
            cfg = cfg.model_copy(update=overrides)
        os.environ.update(cfg.env)
        cfg.vllm_args()  # fail fast on an unknown vLLM argument
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from services.engine.server import serve

    return asyncio.run(serve(cfg, Path(args.ready_file) if args.ready_file else None))


def cmd_generate(args: argparse.Namespace) -> int:
    import grpc

    from services.mesh import client

    tls = None if args.mesh else _operator_tls(args)
    key = _api_key(args) if args.mesh else ""

    async def run() -> int:
        async with client.MeshClient.connect(args.target, key=key, tls=tls) as mesh:  # type: ignore[arg-type]
            req = client.make_request(
                None if args.system else args.prompt,
                messages=[("system", args.system), ("user", args.prompt)] if args.system else (),
                model=args.model,
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                regex=args.regex,
                session_id=args.session or "",
            )
            try:
                reply = await mesh.generate(req, timeout=args.timeout, out=sys.stdout)
            except grpc.aio.AioRpcError as e:
                print(f"\nerror: {e.code().name}: {e.details()}", file=sys.stderr)
                return 1
            client.print_final(reply.final, trace_id=reply.trace_id)
            return 0

    return asyncio.run(run())


def cmd_router(args: argparse.Namespace) -> int:
    from services.common.errors import ConfigError
    from services.router.config import load_mesh_config
    from services.safety.config import load_safety_config

    _use_models_dir(_models_dir(args.models_dir))
    try:
        cfg = load_mesh_config(args.config)
        if args.listen:
            cfg = cfg.model_copy(
                update={"router": cfg.router.model_copy(update={"listen": args.listen})}
            )
        # The safety policy, whose prompt part the router applies: a bad file stops it here.
        safety = load_safety_config(cfg.safety.config) if cfg.safety.enabled else None
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from services.router.server import serve

    watch = Path(args.watch_config or args.config)
    running = Path(args.config) if args.watch_config else None
    ready = Path(args.ready_file) if args.ready_file else None
    asyncio.run(serve(cfg, ready, watch, running, safety=safety))
    return 0


def cmd_safety(args: argparse.Namespace) -> int:
    import pydantic

    from services.common.errors import ConfigError
    from services.common.tls import TlsConfig
    from services.common.tracing import TracingConfig
    from services.safety.config import load_safety_config

    try:
        cfg = load_safety_config(Path(args.config) if args.config else None)
        if args.listen:
            cfg = cfg.model_copy(update={"listen": args.listen})
        if args.tls:
            cfg = cfg.model_copy(update={"tls": TlsConfig.model_validate(json.loads(args.tls))})
        if args.otlp_endpoint is not None or args.trace_sampling is not None:
            tracing = cfg.tracing.model_dump()
            if args.otlp_endpoint is not None:
                tracing["otlp_endpoint"] = args.otlp_endpoint
            if args.trace_sampling is not None:
                tracing["sampling_ratio"] = args.trace_sampling
            cfg = cfg.model_copy(update={"tracing": TracingConfig.model_validate(tracing)})
    except (ConfigError, pydantic.ValidationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from services.safety.server import serve

    asyncio.run(
        serve(cfg, Path(args.ready_file) if args.ready_file else None, args.response_cache or "")
    )
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    """Draw one turn's spans from the local trace files, or list the recent traces."""
    from services.mesh.trace import (
        TraceError,
        default_traces_dir,
        format_trace_list,
        list_traces,
        render_trace,
    )

    directory = Path(args.dir).expanduser() if args.dir else default_traces_dir()
    try:
        if args.trace_id:
            print(render_trace(args.trace_id, directory, width=args.width))
            return 0
        traces = list_traces(directory, args.limit)
    except TraceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not traces:
        print(
            f"no traces in {directory} (services write them when tracing.local_dir is set)",
            file=sys.stderr,
        )
        return 1
    print(format_trace_list(traces))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Run the whole mesh until Ctrl-C; optionally stream one reply through it first."""
    import signal

    from services.mesh.models import init_models
    from services.mesh.up import Mesh, default_state_file

    models = _models_dir(args.models_dir)
    init_models(models, progress=lambda m: print(f"[models] {m}", file=sys.stderr))
    _use_models_dir(models)
    mesh = Mesh(
        Path(args.config),
        free_ports=args.free_ports,
        supervise=not args.no_restart,
        state_file=default_state_file(),
        otlp_endpoint=args.otlp_endpoint,
        tracing_enabled=not args.no_tracing,
        trace_sampling=args.trace_sampling,
        traces_dir=Path(args.traces_dir).expanduser() if args.traces_dir else None,
        metrics_targets=Path(args.metrics_targets) if args.metrics_targets else None,
        redis_url=args.redis,
        engine_nice=args.engine_nice,
    )

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops the mesh the way Ctrl-C does

    signal.signal(signal.SIGTERM, on_signal)
    try:
        mesh.start()
        print(
            f"\nSwitchyard is up. gRPC endpoint: {mesh.endpoint}; "
            f"OpenAI HTTP API: http://{mesh.endpoint}/v1\n"
            f'  try:    switchyard chat --target {mesh.endpoint} "Hello"   '
            f"(API key: {mesh.dev_key_file})\n"
            f"  status: switchyard status --router {mesh.router_address}\n"
            f"  Envoy admin: {mesh.envoy_admin}    Ctrl-C stops everything.",
            file=sys.stderr,
        )
        if args.chat:
            print(f"\n> {args.chat}", file=sys.stderr)
            cmd_chat(
                argparse.Namespace(
                    prompt=args.chat,
                    target=mesh.endpoint,
                    model="",
                    session=None,
                    max_tokens=48,
                    system="You are a helpful assistant.",
                    timeout=120.0,
                    key=mesh.dev_key,
                )
            )
        if args.exit:
            return 0
        signal.pause()
    except KeyboardInterrupt:
        print("\n[up] stopping ...", file=sys.stderr)
    finally:
        mesh.stop()
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """Stream a reply through the mesh (Envoy) and print who served it."""
    return cmd_generate(
        argparse.Namespace(
            target=args.target,
            prompt=args.prompt,
            system=args.system,
            model=args.model,
            max_tokens=args.max_tokens,
            temperature=None,
            regex=None,
            session=args.session,
            timeout=args.timeout,
            mesh=True,
            key=getattr(args, "key", None),
            plaintext=False,
        )
    )


def _router_call(args: argparse.Namespace, method: str, request: object) -> object:
    """One Admin call to the router, as the operator."""
    from services.common.tls import channel
    from switchyard.v1 import router_pb2_grpc

    tls = _operator_tls(args)

    async def run() -> object:
        async with channel(args.router, tls) as ch:  # type: ignore[arg-type]
            return await getattr(router_pb2_grpc.AdminStub(ch), method)(request, timeout=10)

    return asyncio.run(run())


def cmd_status(args: argparse.Namespace) -> int:
    import grpc

    from services.mesh.status import (
        format_processes,
        format_status,
        format_tenants,
        read_up_state,
    )
    from services.mesh.up import default_state_file
    from switchyard.v1 import router_pb2

    if args.tenants:
        try:
            tenants = _router_call(args, "ListTenants", router_pb2.ListTenantsRequest())
        except grpc.aio.AioRpcError as e:
            print(f"error: router {args.router}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        print(format_tenants(tenants))  # type: ignore[arg-type]
        return 0
    state = read_up_state(Path(args.state) if args.state else default_state_file(), args.router)
    try:
        resp = _router_call(args, "Status", router_pb2.StatusRequest())
    except grpc.aio.AioRpcError as e:
        print(f"error: router {args.router}: {e.code().name}: {e.details()}", file=sys.stderr)
        if state is not None:  # the router may be restarting: say what `up` knows
            print(format_processes(state))
        return 1
    print(format_status(resp))  # type: ignore[arg-type]
    if state is not None:
        print()
        print(format_processes(state))
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    import time

    import grpc

    from switchyard.v1 import router_pb2

    try:
        if args.action == "drain":
            r = _router_call(
                args,
                "Drain",
                router_pb2.AdminDrainRequest(engine_id=args.engine, grace_seconds=args.grace or 0),
            )
            print(f"draining {args.engine}: {r.in_flight} turn(s) in flight")  # type: ignore[attr-defined]
        elif args.action == "undrain":
            _router_call(args, "Undrain", router_pb2.AdminUndrainRequest(engine_id=args.engine))
            print(f"{args.engine} takes new turns again")
        elif args.keys_action == "create":
            created = _router_call(
                args,
                "CreateKey",
                router_pb2.CreateKeyRequest(
                    tenant=args.tenant,
                    tier=args.tier or "",
                    models=args.model,
                    name=args.name,
                    quotas=router_pb2.Quotas(**_quota_flags(args)),
                ),
            )
            key = created.key  # type: ignore[attr-defined]
            print(created.secret)  # type: ignore[attr-defined]
            print(
                f"key {key.key_id} for tenant {key.tenant} (tier {key.tier}"
                f"{', models ' + ', '.join(key.models) if key.models else ''}): "
                "the secret above is shown once; keep it",
                file=sys.stderr,
            )
        elif args.keys_action == "list":
            listed = _router_call(args, "ListKeys", router_pb2.ListKeysRequest())
            for k in listed.keys:  # type: ignore[attr-defined]
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created))
                state = "revoked" if k.revoked else "active"
                models = ",".join(k.models) or "*"
                print(
                    f"{k.key_id}  {state:<7}  tenant {k.tenant:<16} tier {k.tier:<9} "
                    f"models {models:<12} created {when}  {k.name}"
                )
        elif args.action == "tenants":
            return _admin_tenants(args)
        elif args.action == "versions":
            return _admin_versions(args)
        elif args.action == "cache":
            purged = _router_call(
                args, "PurgeCache", router_pb2.PurgeCacheRequest(tenant=args.tenant)
            )
            whose = f" of tenant {args.tenant}" if args.tenant else ""
            print(f"purged {purged.purged} stored answers{whose}")  # type: ignore[attr-defined]
        elif args.action == "reload":
            got = _router_call(args, "ReloadConfig", router_pb2.ReloadConfigRequest())
            changed = ", ".join(got.changed) or "nothing had changed"  # type: ignore[attr-defined]
            print(f"reloaded {got.source}: {changed}")  # type: ignore[attr-defined]
        else:
            revoked = _router_call(
                args, "RevokeKey", router_pb2.RevokeKeyRequest(key_id=args.key_id)
            )
            print(f"key {revoked.key.key_id} (tenant {revoked.key.tenant}) revoked")  # type: ignore[attr-defined]
    except grpc.aio.AioRpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    return 0


QUOTA_FLAGS = (
    ("tokens_per_minute", "tokens (prompt + completion) per minute"),
    ("tokens_per_day", "tokens per day"),
    ("requests_per_minute", "turns per minute"),
    ("concurrent_streams", "turns streaming at once"),
    ("default_max_tokens", "max_tokens for turns that leave it unset (and what they reserve)"),
)


def _quota_flags(args: argparse.Namespace) -> dict[str, int]:
    return {name: v for name, _ in QUOTA_FLAGS if (v := getattr(args, name, None)) is not None}


def _add_quota_flags(p: argparse.ArgumentParser) -> None:
    for name, what in QUOTA_FLAGS:
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=int,
            metavar="N",
            help=f"{what}; 0: no limit",
        )


def _admin_versions(args: argparse.Namespace) -> int:
    from services.mesh.status import format_versions
    from switchyard.v1 import router_pb2

    if not args.weights:
        got = _router_call(args, "Status", router_pb2.StatusRequest())
        models = list(got.versions)  # type: ignore[attr-defined]
        if args.model:
            models = [m for m in models if m.model == args.model]
        print("\n".join(format_versions(models)) or "no model has versions configured")
        return 0
    if not args.model:
        print("error: name the model whose version weights to set", file=sys.stderr)
        return 2
    weights: dict[str, float] = {}
    for item in args.weights:
        version, sep, value = item.partition("=")
        try:
            weights[version] = float(value)
        except ValueError:
            sep = ""
        if not sep or not version:
            print(f"error: {item!r}: write VERSION=WEIGHT (e.g. canary=5)", file=sys.stderr)
            return 2
    req = router_pb2.SetVersionWeightsRequest(model=args.model, weights=weights)
    set_ = _router_call(args, "SetVersionWeights", req)
    print("\n".join(format_versions([set_.model])))  # type: ignore[attr-defined]
    return 0


def _admin_tenants(args: argparse.Namespace) -> int:
    from services.mesh.status import format_tenants
    from switchyard.v1 import router_pb2

    if args.tenants_action == "list":
        listed = _router_call(args, "ListTenants", router_pb2.ListTenantsRequest())
        print(format_tenants(listed))  # type: ignore[arg-type]
        return 0
    if args.tenants_action == "reset":
        req = router_pb2.SetTenantRequest(tenant=args.tenant, reset=True)
    else:
        quotas = _quota_flags(args)
        update = [f"quotas.{k}" for k in quotas]
        policy = router_pb2.TenantPolicy(quotas=router_pb2.Quotas(**quotas))
        if args.weight is not None:
            policy.weight = args.weight
            update.append("weight")
        if args.tier is not None:
            policy.tier = args.tier
            update.append("tier")
        if args.cache_group is not None:
            policy.cache_group = args.cache_group
            update.append("cache_group")
        if args.response_cache is not None:
            policy.response_cache = args.response_cache == "on"
            update.append("response_cache")
        if args.response_cache_ttl is not None:
            policy.response_cache_ttl_seconds = args.response_cache_ttl
            update.append("response_cache_ttl_seconds")
        if not update:
            print("error: say what to change (see --help)", file=sys.stderr)
            return 2
        req = router_pb2.SetTenantRequest(tenant=args.tenant, update=update, policy=policy)
    got = _router_call(args, "SetTenant", req).policy  # type: ignore[attr-defined]
    q = {f: getattr(got.quotas, f) for f, _ in QUOTA_FLAGS if getattr(got.quotas, f)}
    print(
        f"tenant {got.tenant} ({got.source}): weight {got.weight:g}, "
        f"tier {got.tier or '(its keys)'}, cache group {got.cache_group or '(own)'}, "
        f"response cache {'on' if got.response_cache else 'off'}, quotas "
        f"{', '.join(f'{k}={v}' for k, v in q.items()) or 'none'}; every router applies it "
        "within a second"
    )
    return 0


def _router_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", default=DEFAULT_ROUTER, help="the router's HOST:PORT")
    p.add_argument(
        "--plaintext", action="store_true", help="no TLS (a mesh run with tls.plaintext)"
    )
    p.add_argument(
        "--operator-tls",
        metavar="DIR",
        help="the operator identity as ca.crt, tls.crt and tls.key in DIR (a Kubernetes TLS "
        "Secret's files; default $SWITCHYARD_OPERATOR_TLS, else the local PKI)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="switchyard", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    u = sub.add_parser("up", help="run the whole mesh on this machine until Ctrl-C")
    u.add_argument("--config", default=str(DEFAULT_MESH_CONFIG), help="mesh config (pools.yaml)")
    u.add_argument("--chat", metavar="PROMPT", help="stream a reply to PROMPT once the mesh is up")
    u.add_argument("--exit", action="store_true", help="stop the mesh after --chat")
    u.add_argument("--free-ports", action="store_true", help="use free ports, not the config's")
    u.add_argument("--no-restart", action="store_true", help="do not restart processes that die")
    u.add_argument("--models-dir", help="where the test models live")
    u.add_argument(
        "--otlp-endpoint",
        metavar="HOST:PORT",
        help="export traces over OTLP/gRPC here (Jaeger: 4317); default: keep them locally",
    )
    u.add_argument(
        "--trace-sampling", type=float, default=1.0, help="fraction of turns traced (default 1)"
    )
    u.add_argument("--no-tracing", action="store_true", help="trace nothing")
    u.add_argument(
        "--traces-dir", help="where local traces go (default ~/.cache/switchyard/traces)"
    )
    u.add_argument(
        "--metrics-targets", metavar="FILE", help="write a Prometheus file_sd list of /metrics"
    )
    u.add_argument(
        "--redis",
        metavar="URL",
        help="keep the quota ledger in this Redis (redis://HOST:PORT/DB), shared by routers",
    )
    u.add_argument(
        "--engine-nice",
        type=int,
        default=0,
        metavar="N",
        help="run engines N steps nicer than the router, safety filter and Envoy, which then "
        "keep the CPU they need when engines fill a small machine (default 0: equal)",
    )
    u.set_defaults(func=cmd_up)

    c = sub.add_parser("chat", help="stream a reply through the mesh")
    c.add_argument("prompt")
    c.add_argument("--target", default=DEFAULT_ENDPOINT, help="the mesh's endpoint (Envoy)")
    c.add_argument(
        "--key",
        help="API key (default: $SWITCHYARD_API_KEY, else the development key `up` made)",
    )
    c.add_argument("--model", default="", help="model or alias (default: the mesh's default)")
    c.add_argument("--session", help="session id: keeps the conversation on its engine")
    c.add_argument("--system", help="system message (sends a chat conversation)")
    c.add_argument("--max-tokens", type=int)
    c.add_argument("--timeout", type=float, help="deadline in seconds")
    c.set_defaults(func=cmd_chat)

    st = sub.add_parser(
        "status", help="pools, engines, load, cache hit rate, xDS ACK/NACK, processes"
    )
    _router_flags(st)
    st.add_argument(
        "--state",
        help="switchyard up's state file (default $SWITCHYARD_STATE or "
        "~/.cache/switchyard/up-state.json): processes, restarts, uptime",
    )
    st.add_argument(
        "--tenants", action="store_true", help="tenants: policy, quota left, turns, tokens"
    )
    st.set_defaults(func=cmd_status)

    ad = sub.add_parser("admin", help="operate the mesh through the router (operator identity)")
    asub = ad.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, what in (("drain", "take an engine out of rotation"), ("undrain", "put it back")):
        a = asub.add_parser(action, help=what)
        a.add_argument("engine", help="engine id (see `switchyard status`)")
        if action == "drain":
            a.add_argument("--grace", type=float, help="seconds before in-flight turns abort")
        _router_flags(a)
    rl = asub.add_parser(
        "reload", help="apply the mesh config's edited model routing now (aliases, tiers...)"
    )
    _router_flags(rl)
    cp = asub.add_parser("cache", help="the response cache: purge stored answers")
    csub = cp.add_subparsers(dest="cache_action", required=True, metavar="CACHE_ACTION")
    cpp = csub.add_parser("purge", help="drop stored answers (one tenant's, or every one)")
    cpp.add_argument("--tenant", default="", help="only this tenant's (default: all)")
    _router_flags(cpp)
    vs = asub.add_parser(
        "versions",
        help="model versions (canary arms): weights, window figures, rollbacks; set weights live",
        description="Without weights: each versioned model's arms. With MODEL VERSION=WEIGHT...: "
        "set those arms' weights live (new sessions follow; a rolled-back arm set again comes "
        "back) until the config's `versions` section for the model changes.",
    )
    vs.add_argument("model", nargs="?", help="a versioned model (default: all, when listing)")
    vs.add_argument("weights", nargs="*", metavar="VERSION=WEIGHT", help="e.g. canary=0 stable=100")
    _router_flags(vs)
    keys = asub.add_parser("keys", help="API keys: create, list, revoke")
    ksub = keys.add_subparsers(dest="keys_action", required=True, metavar="KEYS_ACTION")
    kc = ksub.add_parser("create", help="a new key (its secret is printed once)")
    kc.add_argument("--tenant", required=True, help="the tenant the key's turns belong to")
    kc.add_argument("--tier", help="one of the mesh's tiers (default: auth.default_tier)")
    kc.add_argument(
        "--model", action="append", default=[], help="a model it may use (repeat; default all)"
    )
    kc.add_argument("--name", default="", help="a label for people")
    _add_quota_flags(kc)  # the key's own limits, on top of its tenant's
    kr = ksub.add_parser("revoke", help="revoke a key (within a second, every router)")
    kr.add_argument("key_id", help="the key's id (see `switchyard admin keys list`)")
    kl = ksub.add_parser("list", help="every key: id, state, tenant, tier, models")
    for k in (kc, kr, kl):
        _router_flags(k)
    tenants = asub.add_parser(
        "tenants", help="tenant policies: quotas, fair-share weight, tier, cache group"
    )
    tsub = tenants.add_subparsers(dest="tenants_action", required=True, metavar="TENANTS_ACTION")
    ts = tsub.add_parser("set", help="change a tenant's policy (live, every router)")
    ts.add_argument("tenant")
    ts.add_argument("--weight", type=float, help="share of a saturated pool (default 1)")
    ts.add_argument("--tier", help="override its keys' tier ('' to stop overriding)")
    ts.add_argument(
        "--cache-group", help="share prefix-cache entries with tenants of this group ('': own)"
    )
    ts.add_argument(
        "--response-cache",
        choices=("on", "off"),
        help="answer its deterministic turns from the response cache (default on)",
    )
    ts.add_argument(
        "--response-cache-ttl",
        type=float,
        metavar="SECONDS",
        help="how long its answers are kept (0: the mesh's response_cache.ttl_seconds)",
    )
    _add_quota_flags(ts)
    trs = tsub.add_parser("reset", help="drop the live policy (the config's applies again)")
    trs.add_argument("tenant")
    tl = tsub.add_parser("list", help="every tenant: policy, quota left, turns, tokens")
    for k in (ts, trs, tl):
        _router_flags(k)
    ad.set_defaults(func=cmd_admin)

    r = sub.add_parser("router", help="run the router (registry, ext_proc, xDS, admin)")
    r.add_argument("--config", default=str(DEFAULT_MESH_CONFIG), help="mesh config (pools.yaml)")
    r.add_argument("--listen", help="override router.listen (HOST:PORT)")
    r.add_argument("--ready-file", help="write {address, ports, pid} as JSON here once serving")
    r.add_argument("--models-dir", help="value of ${SWITCHYARD_MODELS} in the config")
    r.add_argument(
        "--watch-config",
        help="the file to reload model routing from (default: --config; `up` gives its own)",
    )
    r.set_defaults(func=cmd_router)

    t = sub.add_parser("trace", help="draw a turn's spans (local trace files) as a waterfall")
    t.add_argument("trace_id", nargs="?", help="trace id or a unique prefix (default: list recent)")
    t.add_argument(
        "--dir", help="trace directory (default: $SWITCHYARD_TRACES or ~/.cache/switchyard/traces)"
    )
    t.add_argument("--limit", type=int, default=20, help="how many recent traces to list")
    t.add_argument("--width", type=int, help="columns to draw in (default: the terminal's)")
    t.set_defaults(func=cmd_trace)

    sf = sub.add_parser("safety", help="run the safety filter (ext_proc, Safety API)")
    sf.add_argument("--config", help="safety policy (YAML); built-in defaults when omitted")
    sf.add_argument("--listen", help="override the config's listen address (HOST:PORT)")
    sf.add_argument("--ready-file", help="write {address, ports, pid} as JSON here once serving")
    sf.add_argument("--otlp-endpoint", metavar="HOST:PORT", help="export spans over OTLP/gRPC")
    sf.add_argument("--trace-sampling", type=float, help="fraction of turns traced")
    sf.add_argument("--tls", help="override the config's tls section (JSON)")
    sf.add_argument(
        "--response-cache",
        metavar="HOST:PORT",
        help="the router whose response cache completed cacheable turns are stored in",
    )
    sf.set_defaults(func=cmd_safety)

    e = sub.add_parser("engine", help="run one engine of a pool")
    e.add_argument("--config", required=True, help="engine config (YAML)")
    e.add_argument("--listen", help="override the config's gRPC address (HOST:PORT)")
    e.add_argument("--engine-id", help="override the config's engine id")
    e.add_argument("--router", help="register with the router at HOST:PORT")
    e.add_argument("--ready-file", help="write {address, ports, pid} as JSON here once serving")
    e.add_argument("--models-dir", help="value of ${SWITCHYARD_MODELS} in the config")
    e.set_defaults(func=cmd_engine)

    g = sub.add_parser("generate", help="stream a reply from an engine (or the mesh)")
    g.add_argument("prompt")
    g.add_argument("--target", default="127.0.0.1:50061", help="HOST:PORT of an engine or Envoy")
    g.add_argument(
        "--mesh",
        action="store_true",
        help="the target is the mesh (Envoy): plaintext with an API key, not the operator's TLS",
    )
    g.add_argument("--key", help="API key, with --mesh (default as for chat)")
    g.add_argument(
        "--plaintext", action="store_true", help="no TLS (an engine run with tls.plaintext)"
    )
    g.add_argument("--model", default="", help="model name or alias (default: the target's)")
    g.add_argument("--system", help="send a chat conversation with this system message")
    g.add_argument("--max-tokens", type=int)
    g.add_argument("--temperature", type=float)
    g.add_argument("--regex", help="constrain the output to this regular expression")
    g.add_argument("--session", help="session id (keeps a conversation on one engine)")
    g.add_argument("--timeout", type=float, help="deadline in seconds")
    g.set_defaults(func=cmd_generate)

    m = sub.add_parser("models", help="local test models")
    msub = m.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    mi = msub.add_parser("init", help="generate small Llama-architecture test models (no network)")
    mi.add_argument("names", nargs="*", help="models to generate (default: all)")
    mi.add_argument(
        "--dir", help="destination (default: $SWITCHYARD_MODELS or ~/.cache/switchyard/models)"
    )
    mi.add_argument("--force", action="store_true", help="regenerate even if up to date")
    mi.set_defaults(func=cmd_models_init)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # SWITCHYARD_DEBUG="services.router.tenancy,…": those loggers log at DEBUG (every process).
    for name in filter(None, os.environ.get("SWITCHYARD_DEBUG", "").split(",")):
        logging.getLogger(name.strip()).setLevel(logging.DEBUG)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
