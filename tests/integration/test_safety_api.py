"""`switchyard.v1.Safety` over real gRPC on loopback: Check and the bidirectional Filter."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.server import create_server
from services.safety.config import SafetyConfig
from services.safety.scrubber import scrub
from services.safety.service import SERVICE_NAME, SafetyService
from switchyard.v1 import safety_pb2, safety_pb2_grpc
from tests.unit.test_scrubber import documents

TEXT = (
    "Reach alice@example.com; card 4111 1111 1111 1111; from 192.168.1.7 with AKIAIOSFODNN7EXAMPLE."
)
CONFIG = SafetyConfig.model_validate(
    {
        "default": {"default_action": "redact", "actions": {"IPV4": "allow"}},
        "models": {"large": {"actions": {"EMAIL": "mask"}}},
        "tenants": {
            "acme": {"actions": {"CREDIT_CARD": "block"}},
            "hashy": {"default_action": "hash"},
        },
    }
)


@contextlib.asynccontextmanager
async def serving(config: SafetyConfig) -> AsyncIterator[safety_pb2_grpc.SafetyStub]:
    """The Safety API on a real gRPC server on loopback, and a client of it."""
    server = await create_server("127.0.0.1:0", [], [SERVICE_NAME])
    SafetyService(config).add_to_server(server.grpc)
    await server.start()
    await server.set_serving(True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield safety_pb2_grpc.SafetyStub(ch)
    await server.stop(None)


@pytest.fixture
async def safety():
    async with serving(CONFIG) as stub:
        yield stub


def findings(report) -> dict[tuple[str, str], int]:
    return {(f.type, f.action): f.count for f in report.findings}


async def test_check_applies_default_model_and_tenant_policies(safety):
    r = await safety.Check(safety_pb2.CheckRequest(text=TEXT))
    assert "alice@example.com" not in r.text and "[EMAIL]" in r.text and "192.168.1.7" in r.text
    assert findings(r.report)[("CREDIT_CARD", "redact")] == 1 and not r.report.blocked
    r = await safety.Check(safety_pb2.CheckRequest(text=TEXT, model="large"))
    assert "*****************" in r.text and ("EMAIL", "mask") in findings(r.report)
    r = await safety.Check(safety_pb2.CheckRequest(text=TEXT, tenant="acme"))
    assert r.report.blocked and "CREDIT_CARD" in r.report.reason
    assert "4111" not in r.text


async def test_hash_is_stable_per_tenant(safety):
    a1 = await safety.Check(safety_pb2.CheckRequest(text="bob@example.org", tenant="hashy"))
    a2 = await safety.Check(safety_pb2.CheckRequest(text="bob@example.org", tenant="hashy"))
    assert a1.text == a2.text and a1.text.startswith("[EMAIL:")
    other = CONFIG.policy("other-tenant")
    assert scrub("bob@example.org", other).text != a1.text


async def test_filter_streams_scrubbed_chunks_equal_to_check(safety):
    chunks = [TEXT[i : i + 3] for i in range(0, len(TEXT), 3)]
    call = safety.Filter(safety_pb2.FilterRequest(text=c) for c in chunks)
    out = [m async for m in call]
    whole = await safety.Check(safety_pb2.CheckRequest(text=TEXT))
    assert "".join(m.text for m in out) == whole.text
    assert findings(out[-1].report) == findings(whole.report)
    assert len(out) > 2, "clean text should stream before the end"


async def test_filter_block_ends_the_stream_with_the_reason(safety):
    chunks = ["my card ", "4111 1111 ", "1111 1111 ", "and then more"]
    reqs = [
        safety_pb2.FilterRequest(text=c, tenant="acme" if i == 0 else "")
        for i, c in enumerate(chunks)
    ]
    out = [m async for m in safety.Filter(iter(reqs))]
    assert out[-1].report.blocked and "CREDIT_CARD" in out[-1].report.reason
    assert "4111" not in "".join(m.text for m in out)


# -- the streaming property, through the gRPC Filter -------------------------------------------

STREAM_CONFIG = SafetyConfig.model_validate({"default": {"default_action": "redact"}})


@pytest.fixture(scope="module")
async def redacting_filter():
    async with serving(STREAM_CONFIG) as stub:
        yield stub


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=documents(), data=st.data())
async def test_filter_output_equals_whole_text_scrub_for_any_chunking(redacting_filter, doc, data):
    """Random text with PII of every type inserted (and multi-byte characters), cut into random
    chunks from one character to the whole text, streamed through Filter."""
    text, inserted = doc
    text = "héllo ✓ " + text + " — fin"
    n = len(text)
    size = data.draw(st.integers(1, n))
    chunks = [text[i : i + size] for i in range(0, n, size)]
    out = [
        m async for m in redacting_filter.Filter(safety_pb2.FilterRequest(text=c) for c in chunks)
    ]
    emitted = [m.text for m in out]
    assert "".join(emitted) == scrub(text, STREAM_CONFIG.policy()).text
    for value in inserted:
        assert value not in "".join(emitted)
        assert all(value not in chunk for chunk in emitted)
