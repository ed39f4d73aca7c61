"""KEDA's external scaler, served by the router: each pool's desired engines as KEDA's metric.

    triggers:                                   # a ScaledObject per pool's engine Deployment
      - type: external                          # (or external-push: StreamIsActive)
        metadata: {scalerAddress: switchyard-router:50051, pool: h100-large}

The metric (`switchyard-desired-engines-<pool>`) is the pool's stabilised desired engines
(services/router/autoscale.py) with a target of 1 per replica, so the HPA KEDA makes asks for
exactly that many replicas: the stabilisation is the router's, and KEDA's HPA should keep its
own windows at 0. `IsActive` is false when the pool wants no engine (KEDA may scale it to zero
when the ScaledObject allows it). An unknown or missing pool is NOT_FOUND / INVALID_ARGUMENT
naming the field. Open to the `autoscaler` identity (mutual TLS) and operators.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc

from services.common.errors import InvalidArgument, NotFound
from services.router.autoscale import PoolScale
from switchyard.v1 import keda_external_scaler_pb2 as pb
from switchyard.v1 import keda_external_scaler_pb2_grpc as pb_grpc

SERVICE_NAME = "externalscaler.ExternalScaler"
METRIC_PREFIX = "switchyard-desired-engines-"
PUSH_SECONDS = 1.0  # how often StreamIsActive checks for a change


class KedaScaler(pb_grpc.ExternalScalerServicer):
    def __init__(self, scales: Callable[[], dict[str, PoolScale]], pools: Callable[[], list[str]]):
        self._scales = scales  # the autoscaler's latest decision per pool
        self._pools = pools  # the configured pools

    def add_to_server(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_ExternalScalerServicer_to_server(self, server)

    def _pool(self, ref: pb.ScaledObjectRef) -> str:
        pool = ref.scalerMetadata.get("pool", "")
        if not pool:
            raise InvalidArgument(
                "scalerMetadata.pool: name the pool whose engines this ScaledObject scales"
            )
        if pool not in self._pools():
            known = ", ".join(sorted(self._pools()))
            raise NotFound(f"scalerMetadata.pool: {pool!r} is not a pool (pools: {known})")
        return pool

    def _desired(self, pool: str) -> int:
        scale = self._scales().get(pool)
        return scale.desired if scale is not None else 0

    async def IsActive(
        self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> pb.IsActiveResponse:
        return pb.IsActiveResponse(result=self._desired(self._pool(request)) > 0)

    async def StreamIsActive(
        self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.IsActiveResponse]:
        pool = self._pool(request)
        last = None
        while True:
            active = self._desired(pool) > 0
            if active != last:
                yield pb.IsActiveResponse(result=active)
                last = active
            await asyncio.sleep(PUSH_SECONDS)

    async def GetMetricSpec(
        self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> pb.GetMetricSpecResponse:
        pool = self._pool(request)
        spec = pb.MetricSpec(metricName=METRIC_PREFIX + pool, targetSize=1, targetSizeFloat=1.0)
        return pb.GetMetricSpecResponse(metricSpecs=[spec])

    async def GetMetrics(
        self, request: pb.GetMetricsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMetricsResponse:
        pool = self._pool(request.scaledObjectRef)
        desired = self._desired(pool)
        value = pb.MetricValue(
            metricName=METRIC_PREFIX + pool, metricValue=desired, metricValueFloat=float(desired)
        )
        return pb.GetMetricsResponse(metricValues=[value])
