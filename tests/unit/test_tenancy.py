"""Tenant policies (config + live file) and admission (reserve, settle from engine reports,
release, an engine gone), over the in-memory ledger."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument, Unavailable
from services.router.auth.config import AuthSection
from services.router.auth.principal import Principal, Quotas
from services.router.tenancy.admission import Admission, QuotaExceeded, QuotaSection
from services.router.tenancy.ledger import MemoryLedger
from services.router.tenancy.policy import PolicyStore, TenantsSection
from services.router.tenancy.redis_ledger import LedgerUnavailable
from switchyard.v1 import engine_pb2

TIERS = AuthSection.model_validate({}).tiers


def store(tmp_path: Path, **policies: object) -> PolicyStore:
    cfg = TenantsSection.model_validate(
        {"file": tmp_path / "tenants.json", "default": {"weight": 1}, "policies": policies}
    )
    return PolicyStore(cfg, set(TIERS), reload_seconds=0.0)


def test_a_live_policy_overrides_the_configs_and_reset_restores_it(tmp_path: Path) -> None:
    ps = store(tmp_path, acme={"weight": 2, "quotas": {"tokens_per_minute": 100}})
    assert ps.get("acme").weight == 2 and ps.source("acme") == "config"
    assert ps.get("nobody").weight == 1 and ps.source("nobody") == "default"
    got = ps.set("acme", {"quotas": {"concurrent_streams": 3}, "tier": "premium"})
    # The fields not named keep their current values.
    assert got.weight == 2 and got.quotas.tokens_per_minute == 100
    assert got.quotas.concurrent_streams == 3 and got.tier == "premium"
    other = store(tmp_path)  # another replica reading the same file
    assert other.get("acme").quotas.concurrent_streams == 3 and other.source("acme") == "live"
    ps.reset("acme")
    assert ps.get("acme").quotas.concurrent_streams == 0 and ps.source("acme") == "config"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tier": "gold"}, "tier 'gold' is not one of the mesh's tiers"),
        ({"weight": 0}, "tenant policy weight: Input should be greater than 0"),
        ({"quotas": {"tokens_per_day": -1}}, "tenant policy quotas.tokens_per_day"),
        ({"cache_group": "a b"}, "tenant policy cache_group"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(tmp_path: Path, fields, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument, match=message):
        store(tmp_path).set("acme", fields)


def admission(tmp_path: Path, ledger=None, **policies: object) -> Admission:  # type: ignore[no-untyped-def]
    return Admission(
        QuotaSection.model_validate({"accept_seconds": 30}),
        store(tmp_path, **policies),
        TIERS,
        ledger or MemoryLedger(),
        "r",
    )


ACME = Principal(tenant="acme", tier="standard", priority=0, key_id="k:abc")


def usage(res: str, done: bool = False, prompt: int = 0, completion: int = 0):  # type: ignore[no-untyped-def]
    return engine_pb2.TurnUsage(
        reservation_id=res, done=done, prompt_tokens=prompt, completion_tokens=completion
    )


async def settle_reports(adm: Admission) -> None:
    """Let the admission's background loop apply every report queued so far."""
    task = asyncio.create_task(adm.run())
    await asyncio.sleep(0.05)
    task.cancel()


async def test_a_turn_settles_from_its_engines_report(tmp_path: Path) -> None:
    adm = admission(tmp_path, acme={"quotas": {"tokens_per_minute": 1000}})
    principal, policy = adm.effective(ACME)
    t = await adm.admit(principal, policy, prompt_tokens=100, max_tokens=400)
    assert t.res_id.endswith(".m") and t.remaining == "tokens_per_minute=500"
    assert adm.stats["acme"].in_flight == 1
    adm.on_usage("e1", usage(t.res_id))
    adm.on_usage("e1", usage(t.res_id, done=True, prompt=100, completion=50))
    await settle_reports(adm)
    st = adm.stats["acme"]
    assert (st.in_flight, st.admitted, st.tokens) == (0, 1, 150)
    assert (await adm.remaining("acme"))["tokens_per_minute"] in (850, 851)


async def test_an_unmetered_tenant_is_still_counted(tmp_path: Path) -> None:
    adm = admission(tmp_path)
    t = await adm.admit(*adm.effective(ACME), prompt_tokens=10, max_tokens=10)
    assert t.res_id and not t.res_id.endswith(".m") and t.remaining == ""
    adm.on_usage("e1", usage(t.res_id, done=True, prompt=10, completion=3))
    await settle_reports(adm)
    assert adm.stats["acme"].tokens == 13 and adm.stats["acme"].in_flight == 0


async def test_a_keys_own_limit_applies_on_top_of_its_tenants(tmp_path: Path) -> None:
    adm = admission(tmp_path, acme={"quotas": {"tokens_per_minute": 10_000}})
    key = Principal(
        tenant="acme", tier="standard", priority=0, key_id="k:abc",
        quotas=Quotas.model_validate({"requests_per_minute": 1}),
    )  # fmt: skip
    t = await adm.admit(*adm.effective(key), prompt_tokens=1, max_tokens=1)
    assert "key.requests_per_minute=0" in t.remaining
    with pytest.raises(QuotaExceeded, match="key k:abc is over its requests_per_minute"):
        await adm.admit(*adm.effective(key), prompt_tokens=1, max_tokens=1)


async def test_a_released_turn_gives_everything_back(tmp_path: Path) -> None:
    adm = admission(tmp_path, acme={"quotas": {"tokens_per_minute": 1000}})
    t = await adm.admit(*adm.effective(ACME), prompt_tokens=100, max_tokens=400)
    await adm.release(t)  # no engine could take it
    assert (await adm.remaining("acme"))["tokens_per_minute"] == 1000
    assert adm.stats["acme"].in_flight == 0


async def test_an_engine_gone_settles_its_turns_at_their_prompt(tmp_path: Path) -> None:
    adm = admission(tmp_path, acme={"quotas": {"tokens_per_minute": 1000}})
    t = await adm.admit(*adm.effective(ACME), prompt_tokens=100, max_tokens=400)
    adm.on_usage("e1", usage(t.res_id))
    adm.engine_gone("e1")
    await settle_reports(adm)
    assert (await adm.remaining("acme"))["tokens_per_minute"] in (900, 901)
    assert adm.stats["acme"].in_flight == 0


async def test_a_tenants_tier_override_sets_its_priority(tmp_path: Path) -> None:
    adm = admission(tmp_path, acme={"tier": "free"})
    principal, _ = adm.effective(ACME)
    assert (principal.tier, principal.priority) == ("free", -10)


class DownLedger(MemoryLedger):
    name = "redis"

    async def reserve(self, *a, **kw):  # type: ignore[no-untyped-def]
        raise LedgerUnavailable("redis at redis://nowhere: ConnectionError")


async def test_a_ledger_down_fails_closed_or_open_as_configured(tmp_path: Path) -> None:
    adm = admission(tmp_path, DownLedger(), acme={"quotas": {"tokens_per_minute": 10}})
    with pytest.raises(Unavailable, match="quota ledger is unreachable"):
        await adm.admit(*adm.effective(ACME), prompt_tokens=1, max_tokens=1)
    adm.cfg = QuotaSection.model_validate({"fail_open": True})
    t = await adm.admit(*adm.effective(ACME), prompt_tokens=1, max_tokens=1)
    assert t.decision == "unmetered" and not t.res_id.endswith(".m")


async def test_a_retried_turns_abandoned_attempt_does_not_settle_what_the_other_still_uses(
    tmp_path: Path,
) -> None:
    # Envoy retried the turn on e2 (e1 too slow to accept): both accept under one reservation,
    # then e1's attempt is cancelled. The turn's stream slot stays taken until e2 ends it.
    adm = admission(tmp_path, acme={"quotas": {"concurrent_streams": 1, "tokens_per_minute": 1000}})
    t = await adm.admit(*adm.effective(ACME), prompt_tokens=100, max_tokens=400)
    adm.on_usage("e2", usage(t.res_id))
    adm.on_usage("e1", usage(t.res_id))
    adm.on_usage("e1", usage(t.res_id, done=True, prompt=100, completion=0))
    await settle_reports(adm)
    assert adm.stats["acme"].in_flight == 1
    with pytest.raises(QuotaExceeded, match="concurrent_streams"):
        await adm.admit(*adm.effective(ACME), prompt_tokens=1, max_tokens=1)
    adm.engine_gone("e1")  # e1's stream closing changes nothing either
    await settle_reports(adm)
    assert adm.stats["acme"].in_flight == 1
    adm.on_usage("e2", usage(t.res_id, done=True, prompt=100, completion=20))
    await settle_reports(adm)
    assert adm.stats["acme"].in_flight == 0
    # Both attempts' tokens are charged once the turn ends: 100 + 100 + 20.
    assert 780 <= (await adm.remaining("acme"))["tokens_per_minute"] <= 790  # (refills)
    await adm.admit(*adm.effective(ACME), prompt_tokens=1, max_tokens=1)  # the slot is back


async def test_an_attempt_that_ends_before_any_engine_took_the_turn_waits_for_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.router.tenancy import admission as adm_module

    monkeypatch.setattr(adm_module, "SWEEP_SECONDS", 0.01)
    adm = admission(tmp_path, acme={"quotas": {"concurrent_streams": 1}})
    # e1 gave up before accepting (Envoy's per-try timeout cancelled it); e2 takes the retry.
    t = await adm.admit(*adm.effective(ACME), prompt_tokens=10, max_tokens=10)
    adm.on_usage("e1", usage(t.res_id, done=True))
    adm.on_usage("e2", usage(t.res_id))
    await settle_reports(adm)
    assert adm.stats["acme"].in_flight == 1
    with pytest.raises(QuotaExceeded, match="concurrent_streams"):
        await adm.admit(*adm.effective(ACME), prompt_tokens=1, max_tokens=1)
    adm.on_usage("e2", usage(t.res_id, done=True, prompt=10, completion=2))
    await settle_reports(adm)
    assert adm.stats["acme"].in_flight == 0
    # No retry comes (a client that went away before any engine took its turn): it ends after
    # the grace, with nothing charged.
    monkeypatch.setattr(adm_module, "RETRY_GRACE_SECONDS", 0.0)
    t = await adm.admit(*adm.effective(ACME), prompt_tokens=10, max_tokens=10)
    adm.on_usage("e1", usage(t.res_id, done=True))
    await settle_reports(adm)
    assert adm.stats["acme"].in_flight == 0
    await adm.admit(*adm.effective(ACME), prompt_tokens=1, max_tokens=1)  # the slot is back


async def test_an_accepted_attempt_cut_before_its_first_token_waits_for_a_retry(
    tmp_path: Path,
) -> None:
    # e1 accepted, but Envoy's per-try timeout fired first (a stalled engine or Envoy): e1's
    # attempt is cancelled and reports its prompt before e2's accept of the retry arrives.
    adm = admission(tmp_path, acme={"quotas": {"concurrent_streams": 1, "tokens_per_minute": 1000}})
    t = await adm.admit(*adm.effective(ACME), prompt_tokens=100, max_tokens=400)
    adm.on_usage("e1", usage(t.res_id))
    adm.on_usage("e1", usage(t.res_id, done=True, prompt=100, completion=0))
    await settle_reports(adm)
    assert adm.stats["acme"].in_flight == 1
    adm.on_usage("e2", usage(t.res_id))
    await settle_reports(adm)
    with pytest.raises(QuotaExceeded, match="concurrent_streams"):
        await adm.admit(*adm.effective(ACME), prompt_tokens=1, max_tokens=1)
    adm.on_usage("e2", usage(t.res_id, done=True, prompt=100, completion=20))
    await settle_reports(adm)
    assert adm.stats["acme"].in_flight == 0
    # Both attempts' tokens are charged: 100 + 100 + 20.
    assert 780 <= (await adm.remaining("acme"))["tokens_per_minute"] <= 790  # (refills)


async def test_a_turn_whose_stream_ends_before_any_engine_took_it_ends_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refused after the router (e.g. Envoy's own error): Envoy ends the HTTP stream,
    # the router's ext_proc stream with it. The pool's slot frees at once, the reservation
    # after the close grace, whole.
    from services.router.saturation import SaturationSection
    from services.router.tenancy import admission as adm_module
    from services.router.tenancy.flow import FlowControl, FlowSection
    from tests.unit.test_flow import Engines, engine

    monkeypatch.setattr(adm_module, "SWEEP_SECONDS", 0.01)
    monkeypatch.setattr(adm_module, "CLOSE_GRACE_SECONDS", 0.0)
    adm = admission(tmp_path, acme={"quotas": {"concurrent_streams": 1, "tokens_per_minute": 1000}})
    sat = SaturationSection.model_validate({"capacity": {"cpu": 4}})
    fc = FlowControl(FlowSection.model_validate({"burst": 0}), sat, Engines(engine()))  # type: ignore[arg-type]
    adm.attach_flow(fc)
    t = await adm.admit(*adm.effective(ACME), prompt_tokens=100, max_tokens=400)
    await fc.admit("p", "acme", priority=0, weight=1, input_tokens=100, output_bound=400,
                   res_id=t.res_id)  # fmt: skip
    assert fc.free_slots("p") == 3
    adm.stream_closed(t.res_id)
    assert fc.free_slots("p") == 4
    await settle_reports(adm)
    assert adm.stats["acme"].in_flight == 0
    assert (await adm.remaining("acme"))["tokens_per_minute"] >= 999  # nothing charged
    await adm.admit(*adm.effective(ACME), prompt_tokens=1, max_tokens=1)  # the stream is back


async def test_a_turns_stream_end_changes_nothing_an_engine_reports_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.router.tenancy import admission as adm_module

    monkeypatch.setattr(adm_module, "SWEEP_SECONDS", 0.01)
    monkeypatch.setattr(adm_module, "CLOSE_GRACE_SECONDS", 0.0)
    adm = admission(tmp_path, acme={"quotas": {"concurrent_streams": 1, "tokens_per_minute": 1000}})
    t = await adm.admit(*adm.effective(ACME), prompt_tokens=100, max_tokens=400)
    adm.on_usage("e1", usage(t.res_id))
    adm.stream_closed(t.res_id)  # (its done report is on its way)
    await settle_reports(adm)
    assert adm.stats["acme"].in_flight == 1
    adm.on_usage("e1", usage(t.res_id, done=True, prompt=100, completion=20))
    await settle_reports(adm)
    assert adm.stats["acme"].in_flight == 0
    assert 878 <= (await adm.remaining("acme"))["tokens_per_minute"] <= 885  # 120 charged
    # An attempt cut before its first token after the stream ended: no retry can come, so it
    # settles after the close grace rather than the retry grace.
    monkeypatch.setattr(adm_module, "RETRY_GRACE_SECONDS", 3600.0)
    t = await adm.admit(*adm.effective(ACME), prompt_tokens=10, max_tokens=10)
    adm.on_usage("e1", usage(t.res_id))
    adm.stream_closed(t.res_id)
    adm.on_usage("e1", usage(t.res_id, done=True, prompt=10))
    await settle_reports(adm)
    assert adm.stats["acme"].in_flight == 0
    # The same when the engine's reports arrive after the stream's end (they often do).
    t = await adm.admit(*adm.effective(ACME), prompt_tokens=10, max_tokens=10)
    adm.stream_closed(t.res_id)
    adm.on_usage("e1", usage(t.res_id))
    adm.on_usage("e1", usage(t.res_id, done=True, prompt=10))
    await settle_reports(adm)
    assert adm.stats["acme"].in_flight == 0
    await adm.admit(*adm.effective(ACME), prompt_tokens=1, max_tokens=1)  # the stream is back


async def test_a_stalled_router_does_not_free_a_turn_whose_accept_it_has_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The turn's stream closes before its engine's accept is read (usual: Envoy ends the
    router's ext_proc stream once it has routed), then the router's loop stalls past the close
    grace. The sweep that wakes after the stall must not end the turn before the accept,
    waiting meanwhile, is read: the tenant's one stream stays taken."""
    import time

    from services.router.tenancy import admission as adm_module

    monkeypatch.setattr(adm_module, "SWEEP_SECONDS", 0.05)
    monkeypatch.setattr(adm_module, "CLOSE_GRACE_SECONDS", 0.1)
    adm = admission(tmp_path, acme={"quotas": {"concurrent_streams": 1}})
    task = asyncio.create_task(adm.run())
    try:
        await asyncio.sleep(0.01)
        t = await adm.admit(*adm.effective(ACME), prompt_tokens=100, max_tokens=400)
        adm.stream_closed(t.res_id)
        time.sleep(0.5)  # noqa: ASYNC251 (the loop stalls, as a starved CPU stalls it)
        await asyncio.sleep(0.001)  # the overdue sweep runs first, then the accept is read
        adm.on_usage("e1", usage(t.res_id))
        await asyncio.sleep(0.3)  # several sweeps later
        assert adm.stats["acme"].in_flight == 1
        with pytest.raises(QuotaExceeded, match="concurrent_streams"):
            await adm.admit(*adm.effective(ACME), prompt_tokens=1, max_tokens=1)
    finally:
        task.cancel()
