"""`switchyard.v1.Safety`: Check (one text) and Filter (a stream of chunks), for callers outside
Envoy, on the same recognizers, scrubber and policies as the filter in the mesh."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from services.safety.config import SafetyConfig
from services.safety.report import safety_report
from services.safety.scrubber import BlockedError, Policy, StreamScrubber, scrub
from switchyard.v1 import safety_pb2, safety_pb2_grpc

SERVICE_NAME = "switchyard.v1.Safety"


class SafetyService(safety_pb2_grpc.SafetyServicer):
    def __init__(self, config: SafetyConfig) -> None:
        self._config = config

    def add_to_server(self, server: grpc.aio.Server) -> None:
        safety_pb2_grpc.add_SafetyServicer_to_server(self, server)

    async def Check(
        self, request: safety_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> safety_pb2.CheckResponse:
        policy = self._config.policy(request.tenant, request.model)
        result = scrub(request.text, policy, self._config.recognizers)
        return safety_pb2.CheckResponse(
            text=result.text, report=safety_report(result.findings, policy, result.blocked)
        )

    async def Filter(
        self,
        requests: AsyncIterator[safety_pb2.FilterRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[safety_pb2.FilterResponse]:
        policy: Policy | None = None
        scrubber: StreamScrubber | None = None
        try:
            async for req in requests:
                if scrubber is None:
                    policy = self._config.policy(req.tenant, req.model)
                    scrubber = StreamScrubber(policy, self._config.recognizers)
                text = scrubber.feed(req.text)
                if text:
                    yield safety_pb2.FilterResponse(text=text)
            if scrubber is None:
                return
            tail = scrubber.finish()
        except BlockedError:
            assert scrubber is not None and policy is not None
            yield safety_pb2.FilterResponse(
                report=safety_report(scrubber.findings, policy, scrubber.blocked)
            )
            return
        assert policy is not None
        yield safety_pb2.FilterResponse(
            text=tail, report=safety_report(scrubber.findings, policy, None)
        )
