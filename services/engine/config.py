"""Engine configuration (YAML): which pool it belongs to, which model it serves, and the vLLM
engine arguments passed through as they are, so one service runs a 70B model with
tensor_parallel_size 8 on H100s and a tiny model on a CPU.

    pool: l4-small
    accelerator: l4
    model:
      path: ${SWITCHYARD_MODELS}/small
      served_name: small
    listen: 127.0.0.1:50061
    vllm:
      max_model_len: 2048
      dtype: bfloat16
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pydantic

from services.common.config import StrictModel, load_config
from services.common.errors import ConfigError
from services.common.tls import TlsConfig
from services.common.tracing import TracingConfig

# vLLM arguments the engine sets itself; a config may not override them.
RESERVED_VLLM_ARGS = frozenset(
    {"model", "served_model_name", "enable_prefix_caching", "kv_events_config", "disable_log_stats"}
)

# Defaults the engine applies unless the config's `vllm:` section says otherwise.
DEFAULT_VLLM_ARGS: dict[str, Any] = {
    # Requests carry a priority; vLLM only honours it under the priority policy.
    "scheduling_policy": "priority",
}


class ModelSection(StrictModel):
    path: Path  # a HuggingFace-format model directory
    served_name: str = pydantic.Field(min_length=1)  # the name requests use
    # Shown in served_by; defaults to the `version` in switchyard-model.json, else "unversioned".
    version: str = ""


class EngineConfig(StrictModel):
    pool: str = pydantic.Field(min_length=1)  # the pool this engine is a member of
    accelerator: str = pydantic.Field(min_length=1)  # "h100", "l4", "cpu"...
    model: ModelSection
    engine_id: str = ""  # unique in the fleet; defaults to "<pool>-<port>"
    listen: str = "127.0.0.1:50061"  # gRPC address; port 0 picks a free port
    # Where clients (Envoy, the router) reach this engine; defaults to the bound listen address.
    advertise_address: str = ""
    router: str = ""  # the router's HOST:PORT to register with; empty runs standalone
    metrics_listen: str = "127.0.0.1:0"  # /metrics address; port 0 picks a free port
    # Plaintext gRPC health only, for probes without a certificate (Kubernetes); "": none.
    health_listen: str = ""
    default_max_tokens: int = pydantic.Field(256, ge=1)  # when a request leaves it unset
    max_tokens_limit: int | None = pydantic.Field(None, ge=1)  # defaults to the context length
    drain_grace_seconds: float = pydantic.Field(30.0, ge=0)  # SIGTERM: time in-flight turns get
    heartbeat_seconds: float = pydantic.Field(1.0, gt=0)  # max gap between load reports
    load_report_min_interval_seconds: float = pydantic.Field(0.02, ge=0)  # coalescing window
    kv_events: bool = True  # forward vLLM KV-cache events on EngineControl.WatchEvents
    warmup: bool = True  # run a short generation before reporting SERVING
    tracing: TracingConfig = pydantic.Field(  # the turn's engine spans (queue, prefill, decode)
        default_factory=lambda: TracingConfig.model_validate({})
    )
    # Mutual TLS: the engine's identity (role `engine`) and the CA; default the local PKI.
    tls: TlsConfig = pydantic.Field(default_factory=lambda: TlsConfig.model_validate({}))
    # Environment set before vLLM loads (e.g. VLLM_CPU_KVCACHE_SPACE, VLLM_CPU_OMP_THREADS_BIND).
    env: dict[str, str] = pydantic.Field(default_factory=dict)
    vllm: dict[str, Any] = pydantic.Field(default_factory=dict)  # AsyncEngineArgs, passed through

    @pydantic.field_validator("vllm")
    @classmethod
    def _no_reserved(cls, v: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(RESERVED_VLLM_ARGS & v.keys())
        if reserved:
            raise ValueError(f"{', '.join(reserved)} is set by the engine itself; remove it")
        return v

    def resolve_paths(self, base: Path) -> EngineConfig:
        """Make a relative model path relative to the config file's directory."""
        if self.model.path.is_absolute():
            return self
        model = self.model.model_copy(update={"path": (base / self.model.path).resolve()})
        return self.model_copy(update={"model": model})

    def model_version(self) -> str:
        if self.model.version:
            return self.model.version
        manifest = self.model.path / "switchyard-model.json"
        try:
            return str(json.loads(manifest.read_text()).get("version", "unversioned"))
        except (OSError, ValueError):
            return "unversioned"

    def vllm_args(self) -> dict[str, Any]:
        """The `vllm:` section over our defaults, checked against vLLM's AsyncEngineArgs."""
        from vllm.engine.arg_utils import AsyncEngineArgs

        known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
        unknown = sorted(set(self.vllm) - known)
        if unknown:
            raise ConfigError(
                f"vllm.{unknown[0]}: not a vLLM engine argument "
                "(see vllm.engine.arg_utils.EngineArgs)"
            )
        return {**DEFAULT_VLLM_ARGS, **self.vllm}


def load_engine_config(path: str | Path) -> EngineConfig:
    p = Path(path)
    cfg = load_config(p, EngineConfig).resolve_paths(p.parent.resolve())
    if not (cfg.model.path / "config.json").is_file():
        raise ConfigError(
            f"{p.name}: model.path: {cfg.model.path} is not a model directory (no config.json); "
            "run `switchyard models init` to create the local test models"
        )
    return cfg
