"""Model versions (services/router/versions.py): sticky weighted arms, live weights, rollback,
the config that declares them, and routing to an arm's engines only."""

from __future__ import annotations

import pydantic
import pytest

from services.common.config import parse_config
from services.common.errors import ConfigError, InvalidArgument, NotFound
from services.router.config import MeshConfig, ModelResolver, version_pool
from services.router.registry import Registry
from services.router.routing import RoutingService
from services.router.scheduling.scheduler import Scheduler
from services.router.sessions import SessionTable
from services.router.testing import make_info, make_load
from services.router.versions import Versions, VersionsSection
from switchyard.v1 import engine_pb2, inference_pb2
from tests.unit.test_router_routing import Tokenizers

SESSIONS = [f"tenant-a/s{i}" for i in range(2000)]


def section(**kw):
    return VersionsSection.model_validate({"weights": {"stable": 90, "canary": 10}, **kw})


def model(sec=None, clock=lambda: 0.0):
    v = Versions(clock=clock)
    v.configure({"small": sec or section()}, lambda m, ver: "pool-" + ver)
    vm = v.get("small")
    assert vm is not None
    return v, vm


def everywhere(pool, version):
    return True


def arm_of(vm, key, serving=everywhere, pinned=""):
    return vm.choose(key, serving, pinned).version


def test_arms_take_their_weights_share_of_sessions_and_keep_them():
    _, vm = model()
    arms = [arm_of(vm, k) for k in SESSIONS]
    share = arms.count("canary") / len(arms)
    assert 0.08 <= share <= 0.12
    assert arms == [arm_of(vm, k) for k in SESSIONS]  # sticky
    choice = vm.choose(SESSIONS[arms.index("canary")], everywhere)
    assert choice.pool == "pool-canary" and "10% of sessions" in choice.reason


def test_a_weight_change_moves_only_the_sessions_it_must():
    _, vm = model()
    before = {k: arm_of(vm, k) for k in SESSIONS}
    vm.set_weights({"canary": 5})
    after = {k: arm_of(vm, k) for k in SESSIONS}
    # A smaller canary: only canary sessions move, to stable; none comes the other way.
    assert all(after[k] == "stable" for k in SESSIONS if before[k] == "stable")
    assert 0.03 <= list(after.values()).count("canary") / len(SESSIONS) <= 0.07
    vm.set_weights({"canary": 0})
    assert {arm_of(vm, k) for k in SESSIONS} == {"stable"}


def test_an_arm_without_a_serving_engine_passes_its_sessions_on():
    _, vm = model()
    key = next(k for k in SESSIONS if arm_of(vm, k) == "canary")
    choice = vm.choose(key, lambda pool, version: version != "canary")
    assert choice.version == "stable" and "canary has no serving engine" in choice.reason
    # No arm serves: the first in the key's order, and the pick says why.
    assert arm_of(vm, key, lambda p, v: False) == "canary"


def test_a_resumed_turn_stays_on_its_arm_while_it_serves():
    _, vm = model()
    key = next(k for k in SESSIONS if arm_of(vm, k) == "stable")
    assert arm_of(vm, key, pinned="canary") == "canary"
    vm.set_weights({"canary": 0})  # even one rolled back finishes its streams
    assert arm_of(vm, key, pinned="canary") == "canary"
    assert arm_of(vm, key, lambda p, v: v != "canary", pinned="canary") == "stable"


def test_set_weights_names_what_is_wrong():
    v, vm = model()
    with pytest.raises(NotFound, match=r"no version 'v3'.*stable, canary"):
        v.set_weights("small", {"v3": 1})
    with pytest.raises(NotFound, match="'large' has no versions configured"):
        v.set_weights("large", {"stable": 1})
    with pytest.raises(InvalidArgument, match=r"weights\[canary\] must be a finite number >= 0"):
        v.set_weights("small", {"canary": -1})
    with pytest.raises(InvalidArgument, match="at least one version"):
        v.set_weights("small", {"canary": 0, "stable": 0})
    assert [a.weight for a in vm.arms.values()] == [90, 10]  # nothing applied


def turns(vm, version, n, failed=False, ttft=0.1):
    reasons = [vm.observe(version, failed, ttft) for _ in range(n)]
    return [r for r in reasons if r]


ROLLBACK = {"window_seconds": 60, "min_turns": 5, "max_failed_increase": 0.1}


def test_a_failing_canary_is_rolled_back_once_both_arms_have_enough_turns():
    _, vm = model(section(rollback=ROLLBACK))
    assert turns(vm, "canary", 5, failed=True) == []  # the baseline has no turns yet
    assert turns(vm, "stable", 4) == []
    (reason,) = turns(vm, "stable", 1) + turns(vm, "canary", 1, failed=True)
    assert "failed 100% of 6 turns against the baseline stable's 0% of 5" in reason
    canary = vm.arms["canary"]
    assert canary.weight == 0 and canary.rolled_back == reason and canary.configured == 10
    proto = vm.to_proto()
    assert proto.arms[1].rolled_back == reason and proto.arms[1].window_failed == 6
    vm.set_weights({"canary": 10})  # an operator brings it back
    assert canary.weight == 10 and not canary.rolled_back


def test_a_canary_within_the_margin_stays():
    _, vm = model(section(rollback=ROLLBACK))
    turns(vm, "stable", 20)
    assert turns(vm, "canary", 10) + turns(vm, "canary", 1, failed=True) == []  # 9% failed
    assert vm.arms["canary"].weight == 10


def test_a_slow_canary_is_rolled_back_on_ttft_p99():
    _, vm = model(section(rollback={**ROLLBACK, "max_ttft_p99_ratio": 2}))
    turns(vm, "stable", 10, ttft=0.2)
    turns(vm, "canary", 4, ttft=0.3)
    (reason,) = turns(vm, "canary", 1, ttft=0.5)
    assert "TTFT p99 500 ms against the baseline stable's 200 ms" in reason


def test_the_baseline_is_never_rolled_back_and_old_turns_leave_the_window():
    now = [0.0]
    _, vm = model(section(rollback=ROLLBACK), clock=lambda: now[0])
    turns(vm, "canary", 5, failed=True)
    now[0] = 100.0  # past the window: those failures no longer count
    turns(vm, "stable", 5, failed=True)
    assert turns(vm, "canary", 5) == []
    assert all(a.weight > 0 for a in vm.arms.values())


def test_a_reload_keeps_an_unchanged_models_state_and_resets_a_changed_one():
    v, vm = model(section(rollback=ROLLBACK))
    vm.set_weights({"canary": 3})
    v.configure({"small": section(rollback=ROLLBACK)}, lambda m, ver: "pool-" + ver)
    assert v.get("small") is vm and vm.arms["canary"].weight == 3
    v.configure({"small": section()}, lambda m, ver: "pool-" + ver)
    assert v.get("small") is not vm and v.get("small").arms["canary"].weight == 10


def test_per_version_metrics_count_every_ended_turn():
    from prometheus_client import REGISTRY

    v, vm = model(section(rollback=ROLLBACK))

    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, {"model": "small", **labels}) or 0.0

    before = sample("switchyard_router_version_turns_total", version="canary", outcome="failed")
    report = engine_pb2.TurnUsage(
        done=True, outcome=engine_pb2.TURN_OUTCOME_FAILED, completion_tokens=3
    )
    v.observe("small", "canary", report, None)
    after = sample("switchyard_router_version_turns_total", version="canary", outcome="failed")
    assert after == before + 1
    assert len(vm.arms["canary"].window) == 1
    v.observe("small", "canary", engine_pb2.TurnUsage(done=True), None)  # no outcome: ignored
    assert len(vm.arms["canary"].window) == 1


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"a": -1}, "weights.a: must be a finite number >= 0"),
        ({"a": 0}, "at least one version needs a weight above 0"),
    ],
)
def test_the_section_is_checked(weights, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        VersionsSection.model_validate({"weights": weights})


POOLS = [
    {
        "name": "l4",
        "accelerator": "l4",
        "models": [{"name": "small", "tokenizer": "/t"}],
    },
    {
        "name": "h100",
        "accelerator": "h100",
        "models": [{"name": "small", "version": "next", "tokenizer": "/t2"}],
    },
]


def config(**extra):
    return parse_config({"pools": POOLS, **extra}, MeshConfig)


def test_a_version_may_live_in_a_pool_of_its_own():
    cfg = config(versions={"small": {"weights": {"stable": 95, "next": 5}}})
    assert version_pool(cfg, "small", "next") == "h100"
    assert version_pool(cfg, "small", "stable") == "l4"  # served unversioned there
    assert ModelResolver(cfg).resolve("small") == ("l4", "small")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, r"pools\[1\].models\[0\].version: 'next' is not one of versions.small.weights"),
        (
            {
                "versions": {
                    "small": {"weights": {"stable": 1, "next": 1}},
                    "tiny": {"weights": {"a": 1}},
                }
            },
            "versions.tiny: 'tiny' is not a model of any pool",
        ),
    ],
)
def test_versions_config_errors_name_the_field(extra, message):
    with pytest.raises(ConfigError, match=message):
        config(**extra)


def test_a_version_no_pool_serves_is_refused():
    pools = [POOLS[1]]
    with pytest.raises(ConfigError, match=r"versions\.small\.weights\.stable: no pool"):
        parse_config(
            {"pools": pools, "versions": {"small": {"weights": {"next": 1, "stable": 1}}}},
            MeshConfig,
        )


async def test_routing_sends_a_session_to_its_arms_engines_only():
    cfg = config(versions={"small": {"weights": {"stable": 50, "next": 50}}})
    reg = Registry()
    for eid, pool, version in (("a", "l4", "stable"), ("b", "l4", "stable"), ("c", "h100", "next")):
        reg.register(make_info(eid, pool=pool, model="small", model_version=version), f"{eid}:1")
        reg.on_load(eid, make_load(eid))
    versions = Versions()
    versions.configure(cfg.versions, lambda m, v: version_pool(cfg, m, v))
    routing = RoutingService(
        ModelResolver(cfg),
        Tokenizers(),
        Scheduler(reg, reg.index, SessionTable()),
        reg,
        versions=versions,
    )
    seen: dict[str, set[str]] = {}
    for i in range(40):
        for _ in range(2):
            req = inference_pb2.GenerateRequest(model="small", prompt="hi", session_id=f"s{i}")
            decision, rr = await routing.route(req, tenant="t")
            seen.setdefault(f"s{i}", set()).add(rr.model_version)
            assert decision.engine.model_version == rr.model_version
            assert decision.pool == ("h100" if rr.model_version == "next" else "l4")
    assert all(len(arms) == 1 for arms in seen.values())
    assert {a for arms in seen.values() for a in arms} == {"stable", "next"}
