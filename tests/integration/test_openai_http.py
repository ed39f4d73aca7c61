"""OpenAI's HTTP API on Envoy's listener, through the same mesh as gRPC: the official `openai`
SDK (and curl) against the running mesh — chat and completions, streamed and not, usage with
cached tokens, every error class, safety, and HTTP streams alongside gRPC ones."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid
from typing import Any

import httpx
import openai
import pytest

from services.mesh.client import generate, make_request
from services.mesh.up import Mesh
from switchyard.v1 import inference_pb2_grpc, router_pb2
from tests.integration.conftest import mesh_channel
from tests.integration.test_engine import long_text
from tests.integration.test_tenancy import tenant_with

pytestmark = pytest.mark.integration

SMALL = "small"


def client(mesh: Mesh, key: str | None = None, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://{mesh.endpoint}/v1",
        api_key=mesh.dev_key if key is None else key,
        max_retries=0,
        timeout=120,
        **kw,
    )


async def test_chat_completion_not_streamed(mesh: Mesh):
    async with client(mesh) as c:
        reply = await c.chat.completions.with_raw_response.create(
            model="chat",  # an alias: the served model answers
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            max_tokens=6,
            temperature=0.0,
        )
    completion = reply.parse()
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == SMALL
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.completion_tokens <= 6 and completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert re.fullmatch(r"[0-9a-f]{32}", reply.headers["x-switchyard-trace-id"])
    assert reply.headers["x-switchyard-served-by"].startswith("l4-small/")
    assert reply.headers["content-type"] == "application/json"


async def test_chat_stream_with_usage_reports_cached_tokens_on_a_repeated_prefix(mesh: Mesh):
    prefix = long_text(700)  # several KV blocks (128 tokens on CPU)
    session = f"s-{uuid.uuid4().hex[:8]}"

    async def turn() -> tuple[str, Any, list[str]]:
        async with client(mesh) as c:
            stream = await c.chat.completions.create(
                model=SMALL,
                messages=[{"role": "user", "content": prefix}],
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-session-id": session},
            )
            text, usage, reasons = [], None, []
            async for chunk in stream:
                assert chunk.object == "chat.completion.chunk"
                if chunk.usage is not None:
                    usage = chunk.usage
                    assert chunk.choices == []
                for choice in chunk.choices:
                    text.append(choice.delta.content or "")
                    if choice.finish_reason:
                        reasons.append(choice.finish_reason)
        return "".join(text), usage, reasons

    _, first, reasons = await turn()
    assert reasons == ["length"] and first.completion_tokens == 4
    for _ in range(20):  # the router indexes the first turn's KV blocks as the engine reports
        _, second, _ = await turn()
        if second.prompt_tokens_details.cached_tokens > 0:
            break
        await asyncio.sleep(0.5)
    assert second.prompt_tokens == first.prompt_tokens
    assert 0 < second.prompt_tokens_details.cached_tokens <= second.prompt_tokens


async def test_completions_streamed_and_not_with_structured_output(mesh: Mesh):
    async with client(mesh) as c:
        plain = await c.completions.create(
            model=SMALL,
            prompt="Say:",
            max_tokens=40,
            extra_body={"regex": re.escape("Hello from the mesh.")},
        )
        assert plain.object == "text_completion" and plain.id.startswith("cmpl-")
        assert plain.choices[0].text == "Hello from the mesh."
        assert plain.choices[0].finish_reason == "stop"
        stream = await c.completions.create(
            model=SMALL,
            prompt="Say:",
            max_tokens=40,
            stream=True,
            extra_body={"regex": re.escape("Hello from the mesh.")},
        )
        pieces = [chunk.choices[0].text async for chunk in stream]
    assert "".join(pieces) == "Hello from the mesh."


async def test_models_lists_what_the_caller_may_use(mesh: Mesh, admin):
    async with client(mesh) as c:
        ids = {m.id async for m in c.models.list()}
    assert {"small", "large", "chat", "reasoning"} <= ids
    key = await admin.CreateKey(
        router_pb2.CreateKeyRequest(tenant="http-small", models=[SMALL], name="http")
    )
    async with client(mesh, key.secret) as c:
        ids = {m.id async for m in c.models.list()}
    assert "small" in ids and "chat" in ids and "large" not in ids and "reasoning" not in ids
    async with client(mesh, key.secret) as c:
        model = await c.models.retrieve("chat")
        assert model.id == "chat" and model.object == "model"
        with pytest.raises(openai.NotFoundError):
            await c.models.retrieve("large")  # exists, but not for this caller


async def test_every_error_class_maps_to_the_sdks_exception(mesh: Mesh, admin):
    messages = [{"role": "user", "content": "Hi"}]
    async with client(mesh, "sy-not-a-key") as c:
        with pytest.raises(openai.AuthenticationError) as e:
            await c.chat.completions.create(model=SMALL, messages=messages, max_tokens=2)
    assert e.value.status_code == 401

    key = await admin.CreateKey(
        router_pb2.CreateKeyRequest(tenant="http-limited", models=[SMALL], name="http")
    )
    async with client(mesh, key.secret) as c:
        with pytest.raises(openai.PermissionDeniedError) as e:
            await c.chat.completions.create(model="reasoning", messages=messages, max_tokens=2)
        assert "not allowed" in e.value.message

    async with client(mesh) as c:
        with pytest.raises(openai.NotFoundError) as e:
            await c.chat.completions.create(model="gpt-17", messages=messages, max_tokens=2)
        assert "model 'gpt-17' is unknown" in e.value.message
        # A pool with no engine: 503, saying why (the SDK's InternalServerError class).
        with pytest.raises(openai.InternalServerError) as e:
            await c.chat.completions.create(model="medium", messages=messages, max_tokens=2)
        assert e.value.status_code == 503
        for bad, param in (
            ({"n": 2}, "n"),
            ({"logprobs": True}, "logprobs"),
            ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ):
            with pytest.raises(openai.BadRequestError) as e:
                await c.chat.completions.create(model=SMALL, messages=messages, max_tokens=2, **bad)
            assert e.value.body["param"] == param, e.value.body  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as e:
            await c.chat.completions.create(
                model=SMALL,
                max_tokens=2,
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}],
                    }
                ],
            )
        assert "image_url" in e.value.message
        # Refused by the engine itself (trailers-only gRPC error): still a 400.
        with pytest.raises(openai.BadRequestError) as e:
            await c.completions.create(
                model=SMALL, prompt="x", max_tokens=2, extra_body={"regex": "(("}
            )
        assert "not a valid regex" in e.value.message

    _, limited = await tenant_with(admin, requests_per_minute=1)
    async with client(mesh, limited) as c:
        await c.chat.completions.create(model=SMALL, messages=messages, max_tokens=1)
        with pytest.raises(openai.RateLimitError) as e:
            await c.chat.completions.create(model=SMALL, messages=messages, max_tokens=1)
    assert int(e.value.response.headers["retry-after"]) >= 1
    assert "requests_per_minute" in e.value.message


async def test_oversized_bodies_are_413_with_an_openai_error(mesh: Mesh):
    url = f"http://{mesh.endpoint}/v1/chat/completions"
    headers = {"authorization": f"Bearer {mesh.dev_key}"}
    async with httpx.AsyncClient(timeout=60) as http:
        for size in (5 * 1024 * 1024, 17 * 1024 * 1024):  # the router's limit; Envoy's buffer
            body = {"model": SMALL, "messages": [{"role": "user", "content": "x" * size}]}
            r = await http.post(url, json=body, headers=headers)
            assert r.status_code == 413, (size, r.text)
            assert r.headers["content-type"] == "application/json", (size, r.text[:300])
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error" and "limit" in error["message"]
        # Not JSON at all, and a path the mesh does not serve.
        r = await http.post(url, content=b"{nope", headers=headers)
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
        r = await http.post(url.replace("chat/completions", "embeddings"), json={}, headers=headers)
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_curl_sees_well_formed_server_sent_events(mesh: Mesh):
    body = json.dumps(
        {
            "model": SMALL,
            "messages": [{"role": "user", "content": "Say:"}],
            "max_tokens": 40,
            "stream": True,
            "regex": re.escape("One two three."),
        }
    )
    out = subprocess.run(
        [
            "curl", "-sS", "-N", "--fail-with-body", "--max-time", "120",
            "-H", f"Authorization: Bearer {mesh.dev_key}",
            "-H", "Content-Type: application/json",
            "-d", body, f"http://{mesh.endpoint}/v1/chat/completions",
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.endswith("data: [DONE]\n\n")
    events = out.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "One two three."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_pii_in_a_streamed_http_reply_is_scrubbed_exactly_as_over_grpc(mesh: Mesh, envoy):
    raw = "Mail bob@example.com or alice＠example．com, card 4111 1111 1111 1111, ok."
    grpc_reply = await generate(
        envoy,
        make_request("Say:", model=SMALL, max_tokens=120, regex=re.escape(raw), temperature=0.0),
    )
    async with client(mesh) as c:
        stream = await c.chat.completions.create(
            model=SMALL,
            messages=[{"role": "user", "content": "Say:"}],
            max_tokens=120,
            temperature=0.0,
            stream=True,
            extra_body={"regex": re.escape(raw)},
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text == grpc_reply.text
    assert "[EMAIL]" in text and "[CREDIT_CARD]" in text
    assert "bob@example.com" not in text and "4111" not in text


async def test_a_blocked_reply_finishes_with_content_filter(mesh: Mesh):
    async with client(mesh) as c:
        reply = await c.chat.completions.create(
            model=SMALL,
            messages=[{"role": "user", "content": "Say:"}],
            max_tokens=60,
            extra_body={"regex": re.escape("The plan is project-nightingale, then more.")},
        )
    assert reply.choices[0].finish_reason == "content_filter"
    assert "nightingale" not in (reply.choices[0].message.content or "")


async def test_eight_http_streams_alongside_grpc_streams(mesh: Mesh):
    async def http_stream(i: int) -> str:
        async with client(mesh) as c:
            stream = await c.chat.completions.create(
                model=SMALL,
                messages=[{"role": "user", "content": f"Stream {i}"}],
                max_tokens=40,
                stream=True,
                extra_body={"regex": re.escape(f"HTTP stream {i} done.")},
            )
            return "".join([ch.choices[0].delta.content or "" async for ch in stream])

    async def grpc_stream(i: int) -> str:
        async with mesh_channel(mesh) as ch:
            request = make_request(
                "Say:", model=SMALL, max_tokens=40, regex=re.escape(f"gRPC stream {i} done.")
            )
            reply = await generate(inference_pb2_grpc.InferenceStub(ch), request)
            return reply.text

    texts = await asyncio.gather(
        *(http_stream(i) for i in range(8)), *(grpc_stream(i) for i in range(4))
    )
    assert texts[:8] == [f"HTTP stream {i} done." for i in range(8)]
    assert texts[8:] == [f"gRPC stream {i} done." for i in range(4)]


async def test_session_header_keeps_a_conversation_on_its_engine(mesh: Mesh):
    session = f"s-{uuid.uuid4().hex[:8]}"
    engines = set()
    async with client(mesh) as c:
        for i in range(4):
            reply = await c.chat.completions.with_raw_response.create(
                model=SMALL,
                messages=[{"role": "user", "content": f"Turn {i} of a conversation"}],
                max_tokens=2,
                extra_headers={"x-session-id": session},
            )
            engines.add(reply.headers["x-switchyard-served-by"])
    assert len(engines) == 1, engines


async def test_http2_clients_get_the_same_answers_without_grpc_trailers(mesh: Mesh):
    headers = {"authorization": f"Bearer {mesh.dev_key}"}
    body = {
        "model": SMALL,
        "prompt": "Say:",
        "max_tokens": 40,
        "regex": re.escape("Over HTTP/2."),
    }
    # h2c with prior knowledge: HTTP/2 on Envoy's cleartext listener, as gRPC uses it.
    async with httpx.AsyncClient(
        base_url=f"http://{mesh.endpoint}", http1=False, http2=True, timeout=120
    ) as http:
        r = await http.post("/v1/completions", json=body, headers=headers)
        assert r.http_version == "HTTP/2" and r.status_code == 200
        assert r.json()["choices"][0]["text"] == "Over HTTP/2."
        async with http.stream(
            "POST", "/v1/completions", json=body | {"stream": True}, headers=headers
        ) as r:
            assert r.headers["content-type"] == "text/event-stream"
            raw = (await r.aread()).decode()
        assert raw.endswith("data: [DONE]\n\n")
        assert "grpc-status" not in r.headers
        r = await http.post("/v1/completions", json=body | {"model": "gpt-17"}, headers=headers)
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


async def test_a_client_that_hangs_up_mid_stream_gets_its_quota_back(mesh: Mesh, admin):
    from tests.integration.test_tenancy import settled

    tenant, key = await tenant_with(admin, concurrent_streams=1)
    async with client(mesh, key) as c:
        stream = await c.chat.completions.create(
            model=SMALL,
            messages=[{"role": "user", "content": "Talk for a long while"}],
            max_tokens=1500,
            stream=True,
        )
        async for _ in stream:
            break  # one chunk, then hang up
        await stream.close()
    st = await settled(admin, tenant)
    assert st.in_flight == 0
    # The stream slot is free again: a new turn is admitted at once.
    async with client(mesh, key) as c:
        reply = await c.chat.completions.create(
            model=SMALL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    assert reply.choices[0].finish_reason in ("stop", "length")
