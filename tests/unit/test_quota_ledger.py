"""The quota ledger, in memory and in a real Redis: the same answers to the same turns."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from services.router.auth.principal import Quotas
from services.router.tenancy.ledger import MemoryLedger, limits_of
from services.router.tenancy.redis_ledger import LedgerUnavailable, RedisLedger


@pytest.fixture(params=["memory", "redis"])
async def ledger(request, redis_server) -> AsyncIterator:  # type: ignore[no-untyped-def]
    if request.param == "memory":
        yield MemoryLedger()
        return
    # A prefix per test: each starts with full buckets.
    led = RedisLedger(redis_server.url, prefix=f"{{switchyard}}:test-{uuid.uuid4().hex[:8]}:")
    yield led
    await led.close()


def tenant(**quotas: int):  # type: ignore[no-untyped-def]
    return limits_of(f"tenant:t-{uuid.uuid4().hex[:6]}", Quotas.model_validate(quotas))


async def test_a_reservation_takes_from_every_limit_and_settling_returns_the_unused(ledger):
    limits = tenant(tokens_per_day=1000, requests_per_minute=10, concurrent_streams=2)
    v = await ledger.reserve("r1", limits, tokens=300, prompt=50, lease=30)
    assert v.granted
    assert v.remaining == {"tokens_per_day": 700, "requests_per_minute": 9, "concurrent_streams": 1}
    assert await ledger.settle("r1", used=120)
    left = await ledger.remaining(limits)
    assert left["tokens_per_day"] == 880  # 1000 - 120 used
    assert left["concurrent_streams"] == 2  # the stream came back
    assert left["requests_per_minute"] == 9  # a request stays made
    assert not await ledger.settle("r1", used=0)  # a report is applied once


async def test_a_turn_over_a_limit_takes_nothing_and_learns_when_to_retry(ledger):
    limits = tenant(tokens_per_minute=600, concurrent_streams=5)
    assert (await ledger.reserve("a", limits, tokens=500, prompt=10, lease=30)).granted
    v = await ledger.reserve("b", limits, tokens=200, prompt=10, lease=30)
    assert not v.granted and v.limit is not None and v.limit.name == "tokens_per_minute"
    # 100 tokens short at 600 per minute: about 10 s.
    assert v.retry_after is not None and 9 <= v.retry_after <= 10.5
    assert "tokens_per_minute" in v.describe(200) and "retry in" in v.describe(200)
    assert (await ledger.remaining(limits))["concurrent_streams"] == 4  # b took nothing
    never = await ledger.reserve("c", limits, tokens=601, prompt=1, lease=30)
    assert not never.granted and never.retry_after is None
    assert "more than" in never.describe(601)


async def test_concurrent_reservations_never_overspend(ledger):
    limits = tenant(tokens_per_day=1000)
    verdicts = await asyncio.gather(
        *(ledger.reserve(f"r{i}", limits, tokens=100, prompt=0, lease=30) for i in range(20))
    )
    granted = [v for v in verdicts if v.granted]
    assert len(granted) == 10
    assert all(v.retry_after and v.retry_after > 0 for v in verdicts if not v.granted)
    for i, v in enumerate(verdicts):
        if v.granted:
            await ledger.settle(f"r{i}", used=0)
    assert (await ledger.remaining(limits))["tokens_per_day"] == 1000


async def test_streams_are_a_limit_that_refills_only_when_streams_end(ledger):
    limits = tenant(concurrent_streams=1)
    assert (await ledger.reserve("s1", limits, tokens=10, prompt=1, lease=30)).granted
    v = await ledger.reserve("s2", limits, tokens=10, prompt=1, lease=30)
    assert not v.granted and v.limit.name == "concurrent_streams" and v.retry_after
    await ledger.settle("s1", used=5)
    assert (await ledger.reserve("s3", limits, tokens=10, prompt=1, lease=30)).granted


async def test_leases_refund_what_no_engine_accepted_and_charge_the_prompt_of_lost_turns(ledger):
    limits = tenant(tokens_per_day=1000)
    await ledger.reserve("never-accepted", limits, tokens=300, prompt=100, lease=0.05)
    await ledger.reserve("accepted", limits, tokens=200, prompt=50, lease=30)
    assert await ledger.accept("accepted", lease=0.05)
    await asyncio.sleep(0.15)
    assert await ledger.expire() == 2
    assert (await ledger.remaining(limits))["tokens_per_day"] == 950  # the prefill happened
    assert not await ledger.settle("accepted", used=10)  # late report: nothing twice


async def test_an_engine_gone_settles_its_turns_at_their_prompt(ledger):
    limits = tenant(tokens_per_day=1000)
    await ledger.reserve("r", limits, tokens=300, prompt=100, lease=30)
    await ledger.accept("r", lease=30)
    assert await ledger.settle_prompt("r")
    assert (await ledger.remaining(limits))["tokens_per_day"] == 900


async def test_an_unreachable_redis_is_an_error_at_once_never_a_hang(redis_server):
    led = RedisLedger("redis://127.0.0.1:1/0", timeout=0.2)
    with pytest.raises(LedgerUnavailable, match="redis at"):
        await asyncio.wait_for(led.reserve("x", tenant(tokens_per_day=10), tokens=1, prompt=1,
                                           lease=1), 2)  # fmt: skip
    await led.close()
    frozen = RedisLedger(redis_server.url, timeout=0.2)
    await frozen.ping()
    redis_server.pause()
    try:
        with pytest.raises(LedgerUnavailable):
            await asyncio.wait_for(frozen.ping(), 2)
    finally:
        redis_server.resume()
    await frozen.close()
