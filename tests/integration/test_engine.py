"""The engine service against a real vLLM engine on loopback (see conftest.py)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import urllib.request
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.mesh.client import generate, make_request
from switchyard.v1 import engine_pb2, inference_pb2
from tests.integration.conftest import frozen_cores

FR = inference_pb2.FinishReason
WORDS = (
    "river signal engine morning copper lantern harbor garden violet thunder quiet "
    "market station window silver meadow"
).split()


def long_text(n_words: int, seed: int | None = None) -> str:
    rnd = random.Random(seed if seed is not None else uuid.uuid4().int)
    return " ".join(rnd.choice(WORDS) for _ in range(n_words))


def metric(url: str, name: str) -> float:
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def collect(inference, req, timeout=60.0):
    msgs = []
    async for m in inference.Generate(req, timeout=timeout):
        msgs.append(m)
    return msgs


async def test_stream_is_deltas_then_exactly_one_final(inference, engine):
    msgs = await collect(inference, make_request("Tell me a story", max_tokens=24, ignore_eos=True))
    kinds = [m.WhichOneof("event") for m in msgs]
    assert kinds[-1] == "final" and kinds.count("final") == 1
    assert set(kinds[:-1]) == {"delta"}
    final = msgs[-1].final
    assert final.finish_reason == FR.FINISH_REASON_LENGTH
    assert final.usage.completion_tokens == 24
    assert final.usage.prompt_tokens > 0
    assert sum(m.delta.token_count for m in msgs[:-1]) <= 24
    assert final.served_by.engine == engine["engine_id"]
    assert final.served_by.pool == "l4-small" and final.served_by.model == "small"
    assert final.served_by.accelerator == "cpu" and final.served_by.model_version
    assert final.timing.ttft.ToNanoseconds() > 0
    assert final.timing.total.ToNanoseconds() >= final.timing.ttft.ToNanoseconds()
    assert final.request_id


async def test_chat_conversation(inference):
    req = make_request(messages=[("system", "Be brief."), ("user", "Hello!")], max_tokens=8)
    msgs = await collect(inference, req)
    assert msgs[-1].final.usage.prompt_tokens > 6


async def test_repeated_long_prefix_hits_the_prefix_cache(inference, engine):
    prefix = long_text(400)  # well over two 128-token blocks
    first = await generate(inference, make_request(prefix + " first", max_tokens=4))
    second = await generate(inference, make_request(prefix + " second", max_tokens=4))
    assert first.final.usage.cached_prompt_tokens == 0
    assert second.final.usage.cached_prompt_tokens >= 128
    assert second.final.usage.cached_prompt_tokens < second.final.usage.prompt_tokens


async def test_structured_output_emits_the_exact_text(inference):
    reply = await generate(
        inference,
        make_request("Contact:", max_tokens=40, regex=r"alice@example\.com", temperature=1.0),
    )
    assert reply.text == "alice@example.com"
    assert reply.final.finish_reason == FR.FINISH_REASON_STOP

    req = make_request("Answer:", max_tokens=10)
    req.structured_output.choice.choices.extend(["approve", "reject"])
    assert (await generate(inference, req)).text in {"approve", "reject"}

    req = make_request("JSON:", max_tokens=200)
    req.structured_output.json_schema = (
        '{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"],'
        '"additionalProperties":false}'
    )
    reply = await generate(inference, req)
    # A random-weight model may wander through the whitespace JSON allows and run out of tokens;
    # every character it emits must still follow the schema, and a finished reply must match it.
    compact = re.sub(r"\s", "", reply.text)
    assert '{"ok":true}'.startswith(compact) or '{"ok":false}'.startswith(compact), reply.text
    if reply.final.finish_reason == FR.FINISH_REASON_STOP:
        assert json.loads(reply.text) in ({"ok": True}, {"ok": False}), reply.text


async def test_stop_sequence_ends_the_reply(inference):
    req = make_request("x", max_tokens=40, regex=r"hello world and more")
    req.sampling.stop.append(" and")
    reply = await generate(inference, req)
    assert reply.text == "hello world"
    assert reply.final.finish_reason == FR.FINISH_REASON_STOP
    assert reply.final.stop_sequence == " and"


async def test_cancellation_aborts_inside_vllm(inference, control, engine):
    url = f"http://127.0.0.1:{engine['metrics_port']}/metrics"
    call = inference.Generate(make_request("Go on forever", max_tokens=1900, ignore_eos=True))
    got = 0
    async for m in call:
        got += m.HasField("delta")
        if got >= 3:
            break
    call.cancel()
    # The engine frees the request: nothing running or waiting, and no tokens keep coming.
    for _ in range(50):
        load = await control.GetLoad(engine_pb2.GetLoadRequest())
        if load.running == 0 and load.waiting == 0 and load.in_flight == 0:
            break
        await asyncio.sleep(0.1)
    assert (load.running, load.waiting, load.in_flight) == (0, 0, 0)
    before = metric(url, "vllm:generation_tokens_total")
    await asyncio.sleep(0.5)
    assert metric(url, "vllm:generation_tokens_total") == before


async def test_deadline_returns_partial_output_with_finish_reason(inference, engine):
    call = inference.Generate(
        make_request("Keep going", max_tokens=1900, ignore_eos=True), timeout=2.0
    )
    msgs = [await call.read()]
    # The core is stopped once the first delta is in, so the deadline (not the budget) ends the
    # turn however fast the tiny model generates on the machine at hand.
    with frozen_cores([engine["pid"]]):
        while (m := await call.read()) is not grpc.aio.EOF:
            msgs.append(m)
    final = msgs[-1].final
    assert final.finish_reason == FR.FINISH_REASON_DEADLINE
    assert 0 < final.usage.completion_tokens < 1900
    assert any(m.HasField("delta") for m in msgs[:-1])


def _utf8_invalid_request() -> bytes:
    data = inference_pb2.GenerateRequest(prompt="@@@@").SerializeToString()
    return data.replace(b"@@@@", b"\xff\xfe\xc3(")


BAD = [
    (make_request(""), "prompt must not be empty"),
    (make_request("hi", max_tokens=0), "sampling.max_tokens must be at least 1"),
    (make_request("hi", max_tokens=100_000), "sampling.max_tokens must be at most 2048"),
    (make_request("hi", temperature=-1.0), "sampling.temperature"),
    (make_request("hi", model="no-such-model"), "model 'no-such-model' is not served here"),
    (make_request("hi", regex="a(b"), "structured_output.regex"),
    (make_request(long_text(2100, seed=1), max_tokens=16), "exceed the model's context of 2048"),
]


@pytest.mark.parametrize(("req", "message"), BAD, ids=[m for _, m in BAD])
async def test_bad_input_is_invalid_argument_naming_the_field(inference, req, message):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await collect(inference, req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()


async def test_bad_top_p_and_schema(inference):
    req = make_request("hi")
    req.sampling.top_p = 1.5
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await collect(inference, req)
    assert (
        e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "sampling.top_p" in e.value.details()
    )
    req = make_request("hi")
    req.structured_output.json_schema = '{"type": 5}'
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await collect(inference, req)
    assert "structured_output.json_schema" in e.value.details()


async def test_invalid_utf8_is_invalid_argument(channel):
    raw = channel.unary_stream(
        "/switchyard.v1.Inference/Generate",
        request_serializer=lambda b: b,
        response_deserializer=inference_pb2.GenerateResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in raw(_utf8_invalid_request()):
            pass
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "prompt is not valid UTF-8"


async def test_truncate_prompt_lets_a_long_prompt_through(inference):
    req = make_request(long_text(2100, seed=2), max_tokens=8)
    req.truncate_prompt = True
    reply = await generate(inference, req)
    assert reply.final.usage.prompt_tokens == 2048 - 8


async def test_engine_keeps_serving_while_bad_requests_fail(inference):
    good = asyncio.create_task(
        generate(inference, make_request("steady", max_tokens=64, ignore_eos=True))
    )
    for req, _ in BAD:
        with pytest.raises(grpc.aio.AioRpcError):
            await collect(inference, req)
    reply = await good
    assert reply.final.usage.completion_tokens == 64


async def test_priority_is_accepted(inference):
    high = make_request("urgent", max_tokens=4)
    high.priority = 10
    low = make_request("later", max_tokens=4)
    low.priority = -5
    for r in await asyncio.gather(generate(inference, high), generate(inference, low)):
        assert r.final.usage.completion_tokens == 4


async def test_kv_events_arrive_for_a_new_prefix(inference, control, engine):
    info = await control.GetInfo(engine_pb2.GetInfoRequest())
    assert info.kv_block_size > 0 and info.kv_events
    watch = control.WatchEvents(engine_pb2.WatchEventsRequest(kv_events=True))
    first = await watch.read()
    assert first.HasField("load")
    prompt = long_text(300)
    reply = await generate(inference, make_request(prompt, max_tokens=2))
    stored: list[engine_pb2.BlockStored] = []
    deadline = asyncio.get_running_loop().time() + 10
    while not stored and asyncio.get_running_loop().time() < deadline:
        ev = await asyncio.wait_for(watch.read(), 10)
        if ev.HasField("kv"):
            stored += [e.stored for e in ev.kv.events if e.HasField("stored")]
    watch.cancel()
    assert stored, "no BlockStored event for a new prefix"
    blocks = stored[0]
    assert blocks.block_size == info.kv_block_size
    assert len(blocks.token_ids) == blocks.block_size * len(blocks.block_hashes)
    assert reply.final.usage.prompt_tokens >= info.kv_block_size


async def test_load_reports_stream(control, inference):
    watch = control.WatchEvents(engine_pb2.WatchEventsRequest(kv_events=False))
    await watch.read()
    task = asyncio.create_task(
        generate(inference, make_request("x", max_tokens=200, ignore_eos=True))
    )
    busy = False
    while not task.done():
        ev = await asyncio.wait_for(watch.read(), 5)
        busy |= ev.load.in_flight > 0 and ev.load.running > 0
    await task
    watch.cancel()
    assert busy, "no load report showed the running turn"


async def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "switchyard.v1.Inference", "switchyard.v1.EngineControl"):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = refl.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    resp = await call.read()
    await call.done_writing()
    names = {s.name for s in resp.list_services_response.service}
    assert {"switchyard.v1.Inference", "switchyard.v1.EngineControl"} <= names


def test_metrics_reexport_vllm_and_engine_metrics(engine):
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{engine['metrics_port']}/metrics", timeout=5)
        .read()
        .decode()
    )
    for name in (
        "vllm:generation_tokens_total",
        "vllm:kv_cache_usage_perc",
        "switchyard_engine_requests_total",
        "switchyard_engine_ttft_seconds_bucket",
        "switchyard_engine_in_flight_requests",
        "switchyard_engine_generated_tokens_total",
    ):
        assert name in body, name
