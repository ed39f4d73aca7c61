"""Filter plugins (services/router/scheduling/plugins/filters/): table tests."""

from typing import Any

import pytest

from services.router.registry import Registry
from services.router.scheduling.interfaces import (
    FITS_CONTEXT_FILTER,
    HEALTHY_FILTER,
    KV_UTILIZATION_FILTER,
    NOT_DRAINING_FILTER,
    SERVES_MODEL_FILTER,
    PluginContext,
)
from services.router.scheduling.registry import builtin_plugins
from services.router.sessions import SessionTable
from services.router.testing import make_engine, make_request


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def build(type_name: str, reg: Registry, **params: Any) -> Any:
    spec = builtin_plugins().get(type_name)
    assert spec is not None and spec.extension_point == "filter"
    ctx = PluginContext(reg, reg.index, SessionTable())
    return spec.factory(type_name, spec.params.model_validate(params), ctx)


CASES = [
    # (filter, params, engine kwargs, request kwargs, silence (s), kept, reason)
    (HEALTHY_FILTER, {}, {}, {}, 0, True, ""),
    (HEALTHY_FILTER, {}, {"serving": False}, {}, 0, False, "not serving (loading or failed)"),
    (HEALTHY_FILTER, {}, {"report": False}, {}, 0, False, "not serving (loading or failed)"),
    (HEALTHY_FILTER, {}, {}, {}, 3.5, False, "silent for 3.5s > 3s"),
    (HEALTHY_FILTER, {}, {}, {}, 2.9, True, ""),
    (HEALTHY_FILTER, {}, {"draining": True}, {}, 0, False, "draining"),
    (NOT_DRAINING_FILTER, {}, {}, {}, 0, True, ""),
    (NOT_DRAINING_FILTER, {}, {"draining": True}, {}, 0, False, "draining"),
    (SERVES_MODEL_FILTER, {}, {"model": "m1"}, {"model": "m1"}, 0, True, ""),
    (SERVES_MODEL_FILTER, {}, {"model": "m1"}, {"model": ""}, 0, True, ""),
    (
        SERVES_MODEL_FILTER,
        {},
        {"model": "m2"},
        {"model": "m1"},
        0,
        False,
        "serves model 'm2', not 'm1'",
    ),
    (
        FITS_CONTEXT_FILTER,
        {},
        {"max_model_len": 100},
        {"prompt_tokens": 84, "max_tokens": 16},
        0,
        True,
        "",
    ),
    (
        FITS_CONTEXT_FILTER,
        {},
        {"max_model_len": 100},
        {"prompt_tokens": 85, "max_tokens": 16},
        0,
        False,
        "prompt 85 + max_tokens 16 = 101 tokens > max_model_len 100",
    ),
    (FITS_CONTEXT_FILTER, {}, {"max_model_len": 0}, {"prompt_tokens": 10**6}, 0, True, ""),
    (KV_UTILIZATION_FILTER, {}, {"kv_usage": 0.95}, {}, 0, True, ""),
    (KV_UTILIZATION_FILTER, {}, {"kv_usage": 0.97}, {}, 0, False, "kv utilization 0.97 > 0.95"),
    (
        KV_UTILIZATION_FILTER,
        {"max_usage": 0.5},
        {"kv_usage": 0.6},
        {},
        0,
        False,
        "kv utilization 0.60 > 0.5",
    ),
]


@pytest.mark.parametrize(
    ("type_name", "params", "engine", "request_kw", "silence", "kept", "reason"), CASES
)
def test_filter(type_name, params, engine, request_kw, silence, kept, reason):
    clock = Clock()
    reg = Registry(stale_after=3.0, clock=clock)
    e = make_engine(reg, "e1", **engine)
    clock.now += silence
    reg.sweep()  # the registry decides who is silent
    f = build(type_name, reg, **params)
    req = make_request(**request_kw)
    assert f.filter(req, [e]) == ([e] if kept else [])
    if not kept:
        assert f.reason(req, e) == reason


def test_filters_keep_order_and_only_drop_the_failing_engines():
    reg = Registry()
    engines = [make_engine(reg, f"e{i}", kv_usage=0.99 if i % 2 else 0.1) for i in range(6)]
    f = build(KV_UTILIZATION_FILTER, reg)
    assert f.filter(make_request(), engines) == engines[0::2]


@pytest.mark.parametrize(
    ("type_name", "params", "field"),
    [
        (KV_UTILIZATION_FILTER, {"max_usage": 1.5}, "max_usage"),
        (HEALTHY_FILTER, {"stale_after_seconds": 10}, "stale_after_seconds"),
        (NOT_DRAINING_FILTER, {"surprise": 1}, "surprise"),
    ],
)
def test_filter_parameters_are_validated(type_name, params, field):
    spec = builtin_plugins().get(type_name)
    assert spec is not None
    with pytest.raises(ValueError, match=field):
        spec.params.model_validate(params)
