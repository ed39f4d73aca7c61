"""Drain: in-flight streams finish, new turns are refused, health says NOT_SERVING."""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.tls import channel as tls_channel
from services.mesh.client import CHANNEL_OPTIONS, generate, make_request
from switchyard.v1 import engine_pb2, engine_pb2_grpc, inference_pb2, inference_pb2_grpc
from tests.integration.conftest import pulsed_until, start_test_engine

FR = inference_pb2.FinishReason
INFERENCE = "switchyard.v1.Inference"
LONG_TURN = 1900  # tokens; the test engine's context is 2048


async def health_status(channel: grpc.aio.Channel) -> int:
    resp = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=INFERENCE)
    )
    return resp.status


async def started(inference: inference_pb2_grpc.InferenceStub, max_tokens: int):
    """Start a long turn and wait for its first delta."""
    call = inference.Generate(make_request("drain me", max_tokens=max_tokens, ignore_eos=True))
    first = await call.read()
    assert first.HasField("delta")
    return call


async def drained_mid_turn(
    inference: inference_pb2_grpc.InferenceStub,
    control: engine_pb2_grpc.EngineControlStub,
    max_tokens: int,
    grace: float,
):
    """Start a long turn, then drain while it is in flight; returns (call, DrainResponse).

    On a 2-core machine, vLLM's CPU worker busy-waits (sched_yield) for a second after each
    step and can starve the client and the engine's gRPC I/O while a fast stream runs: the
    first delta and the Drain call then get through only when the turn has ended. The
    precondition of these tests is not met then, and the scenario is started again."""
    for _ in range(8):
        call = await started(inference, max_tokens)
        resp = await control.Drain(engine_pb2.DrainRequest(grace_seconds=grace))
        if resp.in_flight == 1:
            return call, resp
        await rest(call)
        await control.Resume(engine_pb2.ResumeRequest())
    raise AssertionError("the drain never arrived while a turn was in flight")


async def rest(call) -> list[inference_pb2.GenerateResponse]:
    msgs = []
    while (m := await call.read()) is not grpc.aio.EOF:
        msgs.append(m)
    return msgs


async def test_drain_finishes_in_flight_and_refuses_new(inference, control, channel):
    call, resp = await drained_mid_turn(inference, control, 400, grace=60)
    try:
        assert resp.in_flight == 1
        assert await health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        load = await control.GetLoad(engine_pb2.GetLoadRequest())
        assert load.draining and not load.serving
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await generate(inference, make_request("new turn", max_tokens=4))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "draining" in e.value.details()
        msgs = await rest(call)
        assert msgs[-1].final.finish_reason == FR.FINISH_REASON_LENGTH
        assert msgs[-1].final.usage.completion_tokens == 400
    finally:
        await control.Resume(engine_pb2.ResumeRequest())
    assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    assert (await generate(inference, make_request("back", max_tokens=4))).final is not None


async def test_drain_grace_expiry_aborts_what_is_left(inference, control):
    call, _ = await drained_mid_turn(inference, control, 900, grace=0.3)
    try:
        msgs = await rest(call)
    finally:
        await control.Resume(engine_pb2.ResumeRequest())
    final = msgs[-1].final
    assert final.finish_reason == FR.FINISH_REASON_ABORTED
    assert 0 < final.usage.completion_tokens < 900


async def test_a_reused_request_id_does_not_confuse_the_drain(inference, control):
    """Two turns in flight with the same client request_id are two turns: the drain counts
    both, its grace stops both, and each Final echoes the client's id."""
    calls = []
    for _ in range(2):
        # As long as the context allows: both must still be generating when the drain's
        # 0.3 s grace ends, however late this starved client got to send the Drain.
        req = make_request("same id", max_tokens=LONG_TURN, ignore_eos=True)
        req.request_id = "client-42"
        call = inference.Generate(req)
        assert (await call.read()).HasField("delta")
        calls.append(call)
    try:
        resp = await control.Drain(engine_pb2.DrainRequest(grace_seconds=0.3))
        finals = [(await rest(call))[-1].final for call in calls]
    finally:
        await control.Resume(engine_pb2.ResumeRequest())
    if resp.in_flight == 2:  # (vLLM's CPU worker may let one finish before the Drain lands)
        assert [f.finish_reason for f in finals] == [FR.FINISH_REASON_ABORTED] * 2
    assert [f.request_id for f in finals] == ["client-42", "client-42"]
    load = await control.GetLoad(engine_pb2.GetLoadRequest())
    assert load.in_flight == 0 and load.serving


@pytest.fixture(scope="module")
def sigterm_engine(models_dir, tmp_path_factory):
    proc = start_test_engine(
        "test-sigterm", tmp_path_factory.mktemp("sigterm"), drain_grace_seconds=30, kv_events=False
    )
    yield proc
    proc.stop()


async def test_sigterm_drains_then_exits(sigterm_engine, operator_tls):
    async with tls_channel(sigterm_engine.address, operator_tls, CHANNEL_OPTIONS) as ch:
        inference = inference_pb2_grpc.InferenceStub(ch)
        control = engine_pb2_grpc.EngineControlStub(ch)
        call = inference.Generate(make_request("drain me", max_tokens=LONG_TURN, ignore_eos=True))
        # The turn must still be in flight while the drain is checked: the tiny model finishes
        # it in seconds, and a loaded machine can starve this client longer than that (once the
        # turn had ended before its first delta was read, and the drain found nothing to wait
        # for). Its core runs in pulses until the first delta is read, then stays stopped.
        async with pulsed_until([sigterm_engine.proc.pid], call.read()) as first:
            assert first.HasField("delta")
            sigterm_engine.proc.send_signal(signal.SIGTERM)
            for _ in range(50):
                if await health_status(ch) == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.05)
            assert await health_status(ch) == health_pb2.HealthCheckResponse.NOT_SERVING
            load = await control.GetLoad(engine_pb2.GetLoadRequest())
            assert load.draining and load.in_flight == 1
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await generate(inference, make_request("too late", max_tokens=4))
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        msgs = await rest(call)
    assert msgs[-1].final.finish_reason == FR.FINISH_REASON_LENGTH
    assert msgs[-1].final.usage.completion_tokens == LONG_TURN
    code = await asyncio.to_thread(sigterm_engine.proc.wait, 60)
    assert code == 0
