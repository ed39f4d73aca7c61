"""The typed registry of plugin factories: type name → (extension point, parameters, factory).

A factory gets the plugin's instance name, its parameters validated against the plugin's
`Params` model, and the `PluginContext`. `builtin_plugins()` registers every plugin of
`scheduling/plugins/`; add your own with `register()` on a copy before loading a profile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.common.config import StrictModel
from services.router.scheduling.interfaces import (
    FILTER,
    PICKER,
    SCORER,
    ExtensionPoint,
    Filter,
    Picker,
    Plugin,
    PluginContext,
    Scorer,
)

PluginFactory = Callable[[str, Any, PluginContext], Plugin]


@dataclass(frozen=True)
class PluginSpec:
    """How to build one plugin type."""

    type_name: str  # what profiles write in `type:`
    extension_point: ExtensionPoint  # "filter", "scorer" or "picker"
    params: type[StrictModel]  # validates `parameters:` (unknown keys are errors)
    factory: PluginFactory  # (name, validated params, context) → plugin


class PluginRegistry:
    """Plugin types by name."""

    def __init__(self, specs: dict[str, PluginSpec] | None = None) -> None:
        self._specs: dict[str, PluginSpec] = dict(specs or {})

    def register(
        self,
        extension_point: ExtensionPoint,
        type_name: str,
        params: type[StrictModel],
        factory: PluginFactory,
    ) -> None:
        if extension_point not in (FILTER, SCORER, PICKER):
            raise ValueError(f"unknown extension point {extension_point!r}")
        if type_name in self._specs:
            raise ValueError(f"plugin type {type_name!r} is already registered")
        self._specs[type_name] = PluginSpec(type_name, extension_point, params, factory)

    def get(self, type_name: str) -> PluginSpec | None:
        return self._specs.get(type_name)

    def types(self, extension_point: ExtensionPoint | None = None) -> list[str]:
        return sorted(
            t
            for t, s in self._specs.items()
            if extension_point is None or s.extension_point == extension_point
        )

    def copy(self) -> PluginRegistry:
        return PluginRegistry(self._specs)


def builtin_plugins() -> PluginRegistry:
    """A registry holding every built-in plugin."""
    from services.router.scheduling.plugins.filters import (
        fits_context,
        healthy,
        not_draining,
        serves_model,
    )
    from services.router.scheduling.plugins.filters import kv_utilization as kv_filter
    from services.router.scheduling.plugins.pickers import max_score
    from services.router.scheduling.plugins.scorers import kv_utilization as kv_scorer
    from services.router.scheduling.plugins.scorers import (
        prefix_affinity,
        queue_depth,
        session_affinity,
    )

    r = PluginRegistry()
    r.register(FILTER, healthy.HealthyFilter.type_name, healthy.Params, healthy.HealthyFilter)
    r.register(
        FILTER,
        not_draining.NotDrainingFilter.type_name,
        not_draining.Params,
        not_draining.NotDrainingFilter,
    )
    r.register(
        FILTER,
        serves_model.ServesModelFilter.type_name,
        serves_model.Params,
        serves_model.ServesModelFilter,
    )
    r.register(
        FILTER,
        fits_context.FitsContextFilter.type_name,
        fits_context.Params,
        fits_context.FitsContextFilter,
    )
    r.register(
        FILTER,
        kv_filter.KvUtilizationFilter.type_name,
        kv_filter.Params,
        kv_filter.KvUtilizationFilter,
    )
    r.register(
        SCORER,
        prefix_affinity.PrefixAffinityScorer.type_name,
        prefix_affinity.Params,
        prefix_affinity.PrefixAffinityScorer,
    )
    r.register(
        SCORER,
        session_affinity.SessionAffinityScorer.type_name,
        session_affinity.Params,
        session_affinity.SessionAffinityScorer,
    )
    r.register(
        SCORER,
        queue_depth.QueueDepthScorer.type_name,
        queue_depth.Params,
        queue_depth.QueueDepthScorer,
    )
    r.register(
        SCORER,
        kv_scorer.KvUtilizationScorer.type_name,
        kv_scorer.Params,
        kv_scorer.KvUtilizationScorer,
    )
    r.register(
        PICKER, max_score.MaxScorePicker.type_name, max_score.Params, max_score.MaxScorePicker
    )
    if TYPE_CHECKING:  # the built-in plugins implement their extension point's Protocol
        _f: list[Callable[[str, Any, PluginContext], Filter]] = [
            healthy.HealthyFilter,
            not_draining.NotDrainingFilter,
            serves_model.ServesModelFilter,
            fits_context.FitsContextFilter,
            kv_filter.KvUtilizationFilter,
        ]
        _s: list[Callable[[str, Any, PluginContext], Scorer]] = [
            prefix_affinity.PrefixAffinityScorer,
            session_affinity.SessionAffinityScorer,
            queue_depth.QueueDepthScorer,
            kv_scorer.KvUtilizationScorer,
        ]
        _p: Callable[[str, Any, PluginContext], Picker] = max_score.MaxScorePicker
    return r
