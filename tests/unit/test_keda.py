"""The router's KEDA external scaler (services/router/keda.py) on fake decisions."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.router.autoscale import PoolScale
from services.router.keda import KedaScaler
from switchyard.v1 import keda_external_scaler_pb2 as pb

SCALES = {"big": PoolScale("big", 2, 3, "queue 130 > 100"), "idle": PoolScale("idle", 1, 0, "")}


def scaler() -> KedaScaler:
    return KedaScaler(lambda: SCALES, lambda: ["big", "idle", "new"])


def ref(pool: str) -> pb.ScaledObjectRef:
    return pb.ScaledObjectRef(name="x", scalerMetadata={"pool": pool} if pool else {})


async def test_the_metric_is_the_desired_engines_with_a_target_of_one():
    s = scaler()
    (spec,) = (await s.GetMetricSpec(ref("big"), None)).metricSpecs
    assert (spec.metricName, spec.targetSize, spec.targetSizeFloat) == (
        "switchyard-desired-engines-big", 1, 1.0,
    )  # fmt: skip
    got = await s.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref("big")), None)
    assert got.metricValues[0].metricValueFloat == 3 and got.metricValues[0].metricValue == 3
    assert (await s.IsActive(ref("big"), None)).result
    assert not (await s.IsActive(ref("idle"), None)).result  # wants none: may go to zero
    assert not (await s.IsActive(ref("new"), None)).result  # not evaluated yet


async def test_the_pool_is_named_and_must_exist():
    with pytest.raises(InvalidArgument, match=r"scalerMetadata\.pool: name the pool"):
        await scaler().IsActive(ref(""), None)
    with pytest.raises(NotFound, match="'nope' is not a pool"):
        await scaler().GetMetricSpec(ref("nope"), None)
