"""Disguised and truncated entities through the real mesh: replies forced with structured
output (regex) carry them, Envoy's safety filter scrubs the stream (policy in
tests/integration/safety.yaml: redact by default, CONFIDENTIAL blocked)."""

from __future__ import annotations

import re

import pytest

from services.mesh.client import generate, make_request
from switchyard.v1 import inference_pb2

pytestmark = pytest.mark.integration

SMALL = "small"
LENGTH = inference_pb2.FinishReason.FINISH_REASON_LENGTH
BLOCKED = inference_pb2.FinishReason.FINISH_REASON_BLOCKED


async def forced(envoy, text: str, max_tokens: int = 200):  # type: ignore[no-untyped-def]
    # Greedy: the same tokens each time, so that a length limit cuts at the same place.
    request = make_request(
        "Say:", model=SMALL, max_tokens=max_tokens, regex=re.escape(text), temperature=0.0
    )
    return await generate(envoy, request)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "Mail alice＠example．com, bob\ufe6bmail.example.org, c\u200bar\u200dol@exаmple.com,"
            " dave (at) example (dot) com or erin @ example.net now.",
            "Mail [EMAIL], [EMAIL], [EMAIL], [EMAIL] or [EMAIL] now.",
        ),
        (  # allow-listed (tests/integration/safety.yaml): a domain and a test card number
            "Mail ops@switchyard.dev and alice@example.com, card 4012 8888 8888 1881 and"
            " 4111 1111 1111 1111.",
            "Mail ops@switchyard.dev and [EMAIL], card 4012 8888 8888 1881 and [CREDIT_CARD].",
        ),
        (
            "Cards ４１１１ １１１１ １１１１ １１１１, ٤١١١-١١١١-١١١١-١١١١, 4111.1111.1111.1111,"
            " 4111\u00a01111\u200b1111/1111 ok.",
            "Cards [CREDIT_CARD], [CREDIT_CARD], [CREDIT_CARD], [CREDIT_CARD] ok.",
        ),
    ],
    ids=["emails", "allow-list", "cards"],
)
async def test_disguised_entities_leave_the_mesh_scrubbed(envoy, raw: str, expected: str):
    reply = await forced(envoy, raw)
    assert reply.text == expected
    assert reply.final.finish_reason == inference_pb2.FinishReason.FINISH_REASON_STOP


@pytest.mark.parametrize(
    "raw",
    [
        "The plan is project-nightingale, then more.",
        "The plan is project night\u200bingale, then more.",
        "The plan is project nightіngale, then more.",  # a Cyrillic і
    ],
    ids=["hyphen", "zero-width", "cyrillic"],
)
async def test_a_disguised_blocked_term_still_ends_the_turn(envoy, raw: str):
    reply = await forced(envoy, raw)
    assert reply.final.finish_reason == BLOCKED and "CONFIDENTIAL" in reply.final.safety.reason
    assert "ngale" not in reply.text and "then more" not in reply.text


TRUNCATED = "Mail alice@example.com and card 4111 1111 1111 1111 end."


async def test_a_turn_cut_inside_an_entity_lets_nothing_of_it_out(envoy):
    """Every length limit inside the reply: once what was generated carries an entity's
    evidence (an address's first domain character, six card digits in grouping), none of it
    reaches the client."""
    whole = await forced(envoy, TRUNCATED)
    assert whole.text == "Mail [EMAIL] and card [CREDIT_CARD] end."
    n = whole.final.usage.completion_tokens
    for max_tokens in range(1, n):
        reply = await forced(envoy, TRUNCATED, max_tokens)
        text = reply.text
        if reply.final.finish_reason != LENGTH:  # (the other engine may tokenize it shorter)
            assert text == whole.text, (max_tokens, reply.final)
        assert not re.search(r"@[a-z]", text), (max_tokens, text)  # no domain after an '@'
        assert not re.search(r"\d{4} \d{2}", text), (max_tokens, text)  # nor six card digits
        assert "example" not in text, (max_tokens, text)


KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAqwerty0123456789\nZXhhbXBsZQ==\n"


async def test_a_key_block_leaks_nothing_after_its_begin_line_even_without_an_end(envoy):
    whole = await forced(envoy, "key: " + KEY)  # the reply ends inside the block
    assert whole.text == "key: [PRIVATE_KEY]"
    n = whole.final.usage.completion_tokens
    for max_tokens in range(1, n, 2):
        reply = await forced(envoy, "key: " + KEY, max_tokens)
        assert "MIIE" not in reply.text and "ZXhh" not in reply.text, (max_tokens, reply.text)
        assert "[PRIVATE_KEY]" in reply.text or "PRIVATE KEY-" not in reply.text
