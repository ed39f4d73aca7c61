"""Scheduling profiles (services/router/scheduling/profile.py): loading and rejections."""

import copy
from typing import Any, ClassVar

import pydantic
import pytest

from services.common.config import StrictModel
from services.common.errors import ConfigError
from services.router.registry import EngineState, Registry
from services.router.scheduling.interfaces import PluginContext, RoutingRequest
from services.router.scheduling.profile import DEFAULT_PROFILE, DEFAULT_PROFILE_DOC, load_profile
from services.router.scheduling.registry import builtin_plugins
from services.router.scheduling.scheduler import Scheduler
from services.router.sessions import SessionTable
from services.router.testing import make_engine, make_request


def doc() -> dict[str, Any]:
    return copy.deepcopy(DEFAULT_PROFILE_DOC)


def test_default_profile():
    p = DEFAULT_PROFILE
    assert p.filters == ("not-draining", "healthy", "serves-model", "fits-context", "kv-cap")
    assert dict(p.scorers) == {
        "prefix-affinity": 2,
        "session-affinity": 2,
        "queue-depth": 3,
        "kv-utilization": 1,
    }
    assert p.picker == "max-score"
    assert load_profile({}) is DEFAULT_PROFILE and load_profile(None) is DEFAULT_PROFILE


def test_name_defaults_to_type_and_parameters_are_validated():
    p = load_profile(
        {
            "plugins": [
                {"type": "kv-utilization-filter", "parameters": {"max_usage": 0.8}},
                {"type": "max-score-picker"},
            ],
            "profile": {"filters": ["kv-utilization-filter"], "picker": "max-score-picker"},
        }
    )
    assert p.filters == ("kv-utilization-filter",)
    assert p.plugin("kv-utilization-filter").params.max_usage == 0.8  # type: ignore[attr-defined]
    assert p.scorers == ()


def _mutate(path: str, value: Any) -> dict[str, Any]:
    d = doc()
    target: Any = d
    keys = path.split(".")
    for k in keys[:-1]:
        target = target[int(k)] if isinstance(target, list) else target[k]
    last = keys[-1]
    if value is _DELETE:
        del target[int(last) if isinstance(target, list) else last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return d


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "plugins.0.type",
            "no-such-filter",
            "plugins.0.type: unknown plugin type 'no-such-filter'",
        ),
        (
            "plugins.1.name",
            "not-draining",
            "plugins.1.name: plugin name 'not-draining' is defined twice",
        ),
        ("profile.scorers.0.weight", _DELETE, "profile.scorers.0.weight: Field required"),
        (
            "profile.scorers.1.weight",
            -1,
            "profile.scorers.1.weight: Input should be greater than or equal to 0",
        ),
        ("profile.filters.2", "nope", "profile.filters.2: plugin 'nope' is not defined in plugins"),
        (
            "profile.scorers.0.plugin",
            "ghost",
            "profile.scorers.0.plugin: plugin 'ghost' is not defined",
        ),
        ("profile.picker", "ghost", "profile.picker: plugin 'ghost' is not defined"),
        (
            "profile.picker",
            "healthy",
            "profile.picker: plugin 'healthy' is a filter (healthy-filter), not a picker",
        ),
        ("profile.filters.0", "queue-depth", "profile.filters.0: plugin 'queue-depth' is a scorer"),
        ("profile.filters.1", "not-draining", "profile.filters: 'not-draining' is listed twice"),
        (
            "plugins.4.parameters",
            {"max_usage": 2},
            "plugins.4.parameters: max_usage: Input should be less than or equal to 1",
        ),
        (
            "plugins.4.parameters",
            {"cap": 0.5},
            "plugins.4.parameters: cap: Extra inputs are not permitted",
        ),
        ("profile.picker", _DELETE, "profile.picker: Field required"),
        ("profile.weights", {}, "profile.weights: Extra inputs are not permitted"),
    ],
)
def test_loader_rejects_with_the_field_named(path, value, message):
    with pytest.raises(ConfigError) as err:
        load_profile(_mutate(path, value), source="router.yaml")
    assert str(err.value).startswith("router.yaml: ")
    assert message in str(err.value)


def test_scorer_listed_twice_is_rejected():
    d = doc()
    d["profile"]["scorers"].append({"plugin": "queue-depth", "weight": 1})
    with pytest.raises(ConfigError, match=r"profile\.scorers: 'queue-depth' is listed twice"):
        load_profile(d)


class CountingScorer:
    """A fake scorer: counts calls and answers fixed (even out-of-range) scores."""

    type_name: ClassVar[str] = "counting-scorer"
    decision_reason: ClassVar[str] = "counting"

    class Params(StrictModel):
        scores: dict[str, float] = pydantic.Field(default_factory=dict)

    def __init__(self, name: str, params: "CountingScorer.Params", ctx: PluginContext) -> None:
        self.name = name
        self.scores = params.scores
        self.calls = 0

    def score(self, req: RoutingRequest, engines: list[EngineState]) -> dict[str, float]:
        self.calls += 1
        return dict(self.scores)


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        (
            {"a": 5.0, "b": -2.0, "c": float("nan")},
            {"a": (1.5, 1.0), "b": (0.0, 0.0), "c": (0.0, 0.0)},
        ),
        ({"a": 0.5, "c": float("nan")}, {"a": (0.75, 0.5), "b": (0.0, 0.0), "c": (0.0, 0.0)}),
    ],
)
def test_custom_plugin_in_a_registry_copy_and_scores_are_clamped(scores, expected):
    plugins = builtin_plugins().copy()
    plugins.register("scorer", CountingScorer.type_name, CountingScorer.Params, CountingScorer)
    assert builtin_plugins().get("counting-scorer") is None  # the built-ins are untouched
    profile = load_profile(
        {
            "plugins": [
                {"name": "fake", "type": "counting-scorer", "parameters": {"scores": scores}},
                {"name": "pick", "type": "max-score-picker", "parameters": {"seed": 0}},
            ],
            "profile": {"scorers": [{"plugin": "fake", "weight": 1.5}], "picker": "pick"},
        },
        plugins=plugins,
    )
    reg = Registry()
    for n in "abc":
        make_engine(reg, n)
    sched = Scheduler(reg, reg.index, SessionTable(), profile)
    d = sched.pick(make_request(), commit=False)
    assert d.engine.engine_id == "a" and d.reason == "counting"
    got = {c.engine_id: (c.score, c.scores["fake"]) for c in d.candidates}
    assert got == expected


def test_registering_a_type_twice_is_an_error():
    plugins = builtin_plugins()
    with pytest.raises(ValueError, match="already registered"):
        plugins.register("scorer", "queue-depth-scorer", StrictModel, CountingScorer)
