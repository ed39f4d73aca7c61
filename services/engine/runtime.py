"""The vLLM engine of one engine service: build it from the config, warm it up, run turns.

Everything that touches vLLM's Python API (AsyncLLM, engine args, the KV event publisher's
config, stat loggers) is here, so the servicers only see `Runtime.generate` and `Runtime.abort`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from vllm.inputs.engine import tokens_input

from services.common.tokens import RustEncoder, Tokenizer
from services.engine.config import EngineConfig
from services.engine.kv_events import TOPIC
from services.engine.load import LoadTracker, load_stat_logger_factory
from services.engine.params import Limits, PreparedRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeInfo:
    """Facts about the loaded engine that routers and clients need."""

    max_model_len: int
    kv_block_size: int  # tokens per KV block: read from vLLM, never assumed
    kv_num_blocks: int
    prefix_hash_algo: str
    vllm_version: str


class Runtime:
    """Owns the AsyncLLM. Build with `Runtime.build` (blocking: loads weights, allocates KV)."""

    def __init__(self, llm: Any, limits: Limits, info: RuntimeInfo) -> None:
        self.llm = llm
        self.limits = limits
        self.info = info
        hf = llm.get_tokenizer()
        # Encode through the Rust backend (same ids, less Python per turn); see common/tokens.
        self.tokenizer: Tokenizer = (
            RustEncoder(hf) if getattr(hf, "backend_tokenizer", None) is not None else hf
        )

    @classmethod
    def build(cls, cfg: EngineConfig, tracker: LoadTracker, kv_endpoint: str | None) -> Runtime:
        import vllm
        from vllm.v1.engine.async_llm import AsyncLLM

        args = engine_args(cfg, kv_endpoint)
        llm = AsyncLLM.from_engine_args(args, stat_loggers=[load_stat_logger_factory(tracker)])
        vc = llm.vllm_config
        max_model_len = int(vc.model_config.max_model_len)
        limits = Limits(
            served_name=cfg.model.served_name,
            max_model_len=max_model_len,
            default_max_tokens=cfg.default_max_tokens,
            max_tokens_limit=min(cfg.max_tokens_limit or max_model_len, max_model_len),
        )
        info = RuntimeInfo(
            max_model_len=max_model_len,
            kv_block_size=int(vc.cache_config.block_size),
            kv_num_blocks=int(vc.cache_config.num_gpu_blocks or 0),
            prefix_hash_algo=str(vc.cache_config.prefix_caching_hash_algo),
            vllm_version=str(vllm.__version__),
        )
        return cls(llm, limits, info)

    def generate(self, req: PreparedRequest) -> AsyncIterator[Any]:
        """Stream vLLM RequestOutputs (DELTA kind) for a prepared turn."""
        gen: AsyncIterator[Any] = self.llm.generate(
            tokens_input(req.prompt_token_ids, cache_salt=req.cache_salt or None),
            req.sampling,
            req.engine_request_id,
            priority=req.priority,
        )
        return gen

    async def warmup(self) -> None:
        """One short generation, so the first real turn does not pay for lazy initialisation."""
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        ids = self.tokenizer.encode("Warm up the engine.", add_special_tokens=True)
        sp = SamplingParams(max_tokens=4, temperature=0.0, output_kind=RequestOutputKind.DELTA)
        async for _ in self.llm.generate(tokens_input(ids), sp, f"warmup-{uuid.uuid4().hex}"):
            pass

    @property
    def dead(self) -> bool:
        return bool(self.llm.errored)

    def shutdown(self) -> None:
        self.llm.shutdown()


def engine_args(cfg: EngineConfig, kv_endpoint: str | None) -> Any:
    """vLLM AsyncEngineArgs for `cfg`: prefix caching on, KV events to `kv_endpoint` if given."""
    from vllm.config import KVEventsConfig
    from vllm.engine.arg_utils import AsyncEngineArgs

    kv_config = (
        KVEventsConfig(
            enable_kv_cache_events=True, publisher="zmq", endpoint=kv_endpoint, topic=TOPIC
        )
        if kv_endpoint
        else None
    )
    return AsyncEngineArgs(
        model=str(cfg.model.path),
        served_model_name=[cfg.model.served_name],
        enable_prefix_caching=True,
        kv_events_config=kv_config,
        disable_log_stats=False,
        **cfg.vllm_args(),
    )
