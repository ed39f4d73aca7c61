"""`switchyard`: the command line of the mesh.

switchyard demo [PROMPT]              start an engine, stream a reply to PROMPT, stop
switchyard engine --config FILE       run one engine (pool member) until SIGTERM
switchyard generate --target ADDR P   stream a reply from an engine or the mesh
switchyard models init                generate the local test models (no network)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ENGINE_CONFIG = REPO_ROOT / "deploy" / "local" / "engine-small.yaml"
DEFAULT_PROMPT = "Tell me about the switchyard at the edge of town."


def _models_dir(arg: str | None) -> Path:
    from services.mesh.models import default_models_dir

    return Path(arg).expanduser().resolve() if arg else default_models_dir()


def _use_models_dir(path: Path) -> None:
    """Engine configs refer to models as ${SWITCHYARD_MODELS}/NAME."""
    os.environ["SWITCHYARD_MODELS"] = str(path)


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
            for k, v in (("listen", args.listen), ("engine_id", args.engine_id),
                         ("router", args.router))
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

    asyncio.run(serve(cfg, Path(args.ready_file) if args.ready_file else None))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import grpc

    from services.mesh import client
    from switchyard.v1 import inference_pb2_grpc

    async def run() -> int:
        async with client.channel(args.target) as ch:
            stub = inference_pb2_grpc.InferenceStub(ch)
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
                reply = await client.generate(stub, req, timeout=args.timeout, out=sys.stdout)
            except grpc.aio.AioRpcError as e:
                print(f"\nerror: {e.code().name}: {e.details()}", file=sys.stderr)
                return 1
            client.print_final(reply.final)
            return 0

    return asyncio.run(run())


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate models if needed, start one engine, stream a reply through gRPC, stop."""
    from services.mesh import procs
    from services.mesh.models import init_models

    models = _models_dir(args.models_dir)
    init_models(models, ["small"], progress=lambda m: print(f"[models] {m}", file=sys.stderr))
    _use_models_dir(models)
    engine = procs.start_engine(
        Path(args.config), name="demo-engine", overrides={"listen": "127.0.0.1:0"}
    )
    print(f"[demo] starting engine (log: {engine.log_path})", file=sys.stderr)
    try:
        engine.wait_ready(on_progress=lambda line: print(line, file=sys.stderr))
        print(f"[demo] > {args.prompt}", file=sys.stderr)
        ns = argparse.Namespace(
            target=engine.address,
            prompt=args.prompt,
            system="You are a helpful assistant.",
            model="",
            max_tokens=args.max_tokens,
            temperature=0.8,
            regex=None,
            session=None,
            timeout=120.0,
        )
        return cmd_generate(ns)
    finally:
        code = engine.stop()
        print(f"[demo] engine stopped (exit {code})", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="switchyard", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="start an engine and stream a reply to a prompt")
    d.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT)
    d.add_argument("--config", default=str(DEFAULT_ENGINE_CONFIG), help="engine config (YAML)")
    d.add_argument("--max-tokens", type=int, default=48)
    d.add_argument(
        "--models-dir", help="where the test models live (default ~/.cache/switchyard/models)"
    )
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("engine", help="run one engine of a pool")
    e.add_argument("--config", required=True, help="engine config (YAML)")
    e.add_argument("--listen", help="override the config's gRPC address (HOST:PORT)")
    e.add_argument("--engine-id", help="override the config's engine id")
    e.add_argument("--router", help="register with the router at HOST:PORT")
    e.add_argument("--ready-file", help="write {address, ports, pid} as JSON here once serving")
    e.add_argument("--models-dir", help="value of ${SWITCHYARD_MODELS} in the config")
    e.set_defaults(func=cmd_engine)

    g = sub.add_parser("generate", help="stream a reply from an engine or the mesh")
    g.add_argument("prompt")
    g.add_argument("--target", default="127.0.0.1:50061", help="HOST:PORT of an engine or Envoy")
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
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
