"""`switchyard.v1.EngineControl`: engine identity, load snapshot and stream, drain and resume."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from services.common.errors import Unavailable
from services.engine.admission import Admission
from services.engine.config import EngineConfig
from services.engine.load import LoadTracker
from services.engine.runtime import Runtime
from switchyard.v1 import engine_pb2, engine_pb2_grpc

SERVICE_NAME = "switchyard.v1.EngineControl"


class EngineControlService(engine_pb2_grpc.EngineControlServicer):
    def __init__(
        self,
        cfg: EngineConfig,
        engine_id: str,
        runtime_ref: list[Runtime | None],
        tracker: LoadTracker,
        admission: Admission,
        set_serving: Callable[[bool], Awaitable[None]],
    ) -> None:
        self._cfg = cfg
        self._engine_id = engine_id
        self._runtime_ref = runtime_ref
        self._tracker = tracker
        self._admission = admission
        self._set_serving = set_serving

    def add_to_server(self, server: grpc.aio.Server) -> None:
        engine_pb2_grpc.add_EngineControlServicer_to_server(self, server)

    async def GetInfo(
        self, request: engine_pb2.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.EngineInfo:
        return self.info()

    def info(self) -> engine_pb2.EngineInfo:
        runtime = self._runtime_ref[0]
        if runtime is None:
            raise Unavailable(f"engine {self._engine_id} is still loading its model")
        i = runtime.info
        return engine_pb2.EngineInfo(
            engine_id=self._engine_id,
            pool=self._cfg.pool,
            accelerator=self._cfg.accelerator,
            model=self._cfg.model.served_name,
            model_version=self._cfg.model_version(),
            max_model_len=i.max_model_len,
            kv_block_size=i.kv_block_size,
            kv_num_blocks=i.kv_num_blocks,
            prefix_hash_algo=i.prefix_hash_algo,
            vllm_version=i.vllm_version,
            kv_events=self._cfg.kv_events,
            max_tokens_limit=runtime.limits.max_tokens_limit,
        )

    async def GetLoad(
        self, request: engine_pb2.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.LoadReport:
        return self._tracker.report()

    async def WatchEvents(
        self, request: engine_pb2.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[engine_pb2.EngineEvent]:
        watcher = self._tracker.watch(kv_events=request.kv_events)
        try:
            async for event in watcher.events(self._cfg.heartbeat_seconds):
                yield event
        finally:
            self._tracker.unwatch(watcher)

    async def Drain(
        self, request: engine_pb2.DrainRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.DrainResponse:
        grace = request.grace_seconds or self._cfg.drain_grace_seconds
        in_flight = self.drain(grace)
        await self._set_serving(False)
        return engine_pb2.DrainResponse(in_flight=in_flight)

    async def Resume(
        self, request: engine_pb2.ResumeRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.ResumeResponse:
        self._admission.resume()
        await self._set_serving(not self._admission.loading)
        return engine_pb2.ResumeResponse()

    def drain(self, grace: float) -> int:
        return self._admission.drain(grace)
