"""Declarative scheduling profiles: which plugins, in which order, with which weights.

    plugins:
      - {name: kv-cap, type: kv-utilization-filter, parameters: {max_usage: 0.9}}
      - {name: prefix-affinity, type: prefix-affinity-scorer}
      - {name: queue-depth, type: queue-depth-scorer}
      - {name: max-score, type: max-score-picker}
    profile:
      filters: [kv-cap]
      scorers: [{plugin: prefix-affinity, weight: 2}, {plugin: queue-depth, weight: 3}]
      picker: max-score

`name` defaults to the type. The loader rejects unknown types, duplicate names, unknown or
invalid parameters, missing or negative weights, references to undefined plugins and plugins
used at the wrong extension point, raising ConfigError naming the field. An empty document is
the default profile.

DEFAULT_PROFILE, and why its weights:
  filters: not-draining, healthy, serves-model, fits-context, kv-cap (0.95). Draining first so
  a draining engine is reported as such rather than as "not serving".
  scorers: prefix-affinity 2, session-affinity 2, queue-depth 3, kv-utilization 1.
  - A session turn on its own, not overloaded engine always stays: prefix + session = 4 beats
    the most any other engine gets from load (3) and, mostly, kv (1).
  - Queue depth outweighs a full prefix match only when the queue is deep: with
    half_score_depth 8, an engine holding the whole prompt keeps it until it has about 16 more
    turns than the least loaded one (3 - 3·8/(d+8) > 2). With prefix above queue (e.g. 3 vs 2)
    a hot prefix would pin every turn to one engine until its KV cap tripped.
  - When the session's engine is overloaded (queue > 32 or KV > 0.9) the session scorer lets
    go and the turn moves to a clearly less loaded engine; the session follows it.
  - KV utilization breaks near-ties toward engines with room, without fighting the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import pydantic

from services.common.config import StrictModel, format_validation_error
from services.common.errors import ConfigError
from services.router.scheduling.interfaces import (
    FILTER,
    FITS_CONTEXT_FILTER,
    HEALTHY_FILTER,
    KV_UTILIZATION_FILTER,
    KV_UTILIZATION_SCORER,
    MAX_SCORE_PICKER,
    NOT_DRAINING_FILTER,
    PICKER,
    PREFIX_AFFINITY_SCORER,
    QUEUE_DEPTH_SCORER,
    SCORER,
    SERVES_MODEL_FILTER,
    SESSION_AFFINITY_SCORER,
    Filter,
    Picker,
    PluginContext,
    Scorer,
)
from services.router.scheduling.registry import PluginRegistry, PluginSpec, builtin_plugins

# -- the document ---------------------------------------------------------------------------


class PluginEntry(StrictModel):
    name: str = ""  # defaults to `type`
    type: str = pydantic.Field(min_length=1)
    parameters: dict[str, Any] = pydantic.Field(default_factory=dict)


class ScorerRef(StrictModel):
    plugin: str = pydantic.Field(min_length=1)
    weight: float = pydantic.Field(ge=0)  # required


class ProfileSection(StrictModel):
    filters: list[str] = pydantic.Field(default_factory=list)
    scorers: list[ScorerRef] = pydantic.Field(default_factory=list)
    picker: str = pydantic.Field(min_length=1)


class ProfileDocument(StrictModel):
    plugins: list[PluginEntry]
    profile: ProfileSection


# -- the validated profile ------------------------------------------------------------------


@dataclass(frozen=True)
class PluginDef:
    """One configured plugin instance, validated, not yet built."""

    name: str
    spec: PluginSpec
    params: StrictModel


@dataclass(frozen=True)
class BuiltProfile:
    """Plugin instances in pipeline order."""

    filters: list[Filter]
    scorers: list[tuple[Scorer, float]]
    picker: Picker


@dataclass(frozen=True)
class Profile:
    """A validated profile; `build(ctx)` makes the plugin instances."""

    plugins: tuple[PluginDef, ...]
    filters: tuple[str, ...]  # plugin names, in order
    scorers: tuple[tuple[str, float], ...]  # (plugin name, weight)
    picker: str  # plugin name
    source: str = "profile"

    def plugin(self, name: str) -> PluginDef:
        for p in self.plugins:
            if p.name == name:
                return p
        raise KeyError(name)

    def build(self, ctx: PluginContext) -> BuiltProfile:
        made = {p.name: p.spec.factory(p.name, p.params, ctx) for p in self.plugins}
        return BuiltProfile(
            filters=[cast(Filter, made[n]) for n in self.filters],
            scorers=[(cast(Scorer, made[n]), w) for n, w in self.scorers],
            picker=cast(Picker, made[self.picker]),
        )


def load_profile(
    data: Mapping[str, Any] | None = None,
    *,
    source: str = "profile",
    plugins: PluginRegistry | None = None,
) -> Profile:
    """Validate a profile document (already parsed YAML); empty or None → DEFAULT_PROFILE."""
    if not data:
        return DEFAULT_PROFILE
    reg = plugins or _BUILTIN
    try:
        doc = ProfileDocument.model_validate(dict(data))
    except pydantic.ValidationError as e:
        raise ConfigError(format_validation_error(source, e)) from None

    defs: dict[str, PluginDef] = {}
    for i, entry in enumerate(doc.plugins):
        where = f"{source}: plugins.{i}"
        spec = reg.get(entry.type)
        if spec is None:
            raise ConfigError(
                f"{where}.type: unknown plugin type {entry.type!r} "
                f"(known: {', '.join(reg.types())})"
            )
        name = entry.name or entry.type
        if name in defs:
            raise ConfigError(f"{where}.name: plugin name {name!r} is defined twice")
        try:
            params = spec.params.model_validate(entry.parameters)
        except pydantic.ValidationError as e:
            raise ConfigError(format_validation_error(f"{where}.parameters", e)) from None
        defs[name] = PluginDef(name, spec, params)

    def ref(field: str, name: str, point: str) -> str:
        d = defs.get(name)
        if d is None:
            known = ", ".join(defs) or "none"
            raise ConfigError(
                f"{source}: {field}: plugin {name!r} is not defined in plugins (defined: {known})"
            )
        if d.spec.extension_point != point:
            raise ConfigError(
                f"{source}: {field}: plugin {name!r} is a {d.spec.extension_point} "
                f"({d.spec.type_name}), not a {point}"
            )
        return name

    p = doc.profile
    filters = tuple(ref(f"profile.filters.{i}", n, FILTER) for i, n in enumerate(p.filters))
    if len(set(filters)) != len(filters):
        dup = next(n for n in filters if filters.count(n) > 1)
        raise ConfigError(f"{source}: profile.filters: {dup!r} is listed twice")
    scorers = tuple(
        (ref(f"profile.scorers.{i}.plugin", s.plugin, SCORER), s.weight)
        for i, s in enumerate(p.scorers)
    )
    names = [n for n, _ in scorers]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"{source}: profile.scorers: {dup!r} is listed twice")
    picker = ref("profile.picker", p.picker, PICKER)
    return Profile(tuple(defs.values()), filters, scorers, picker, source)


_BUILTIN = builtin_plugins()

DEFAULT_PROFILE_DOC: dict[str, Any] = {
    "plugins": [
        {"name": "not-draining", "type": NOT_DRAINING_FILTER},
        {"name": "healthy", "type": HEALTHY_FILTER},
        {"name": "serves-model", "type": SERVES_MODEL_FILTER},
        {"name": "fits-context", "type": FITS_CONTEXT_FILTER},
        {"name": "kv-cap", "type": KV_UTILIZATION_FILTER, "parameters": {"max_usage": 0.95}},
        {"name": "prefix-affinity", "type": PREFIX_AFFINITY_SCORER},
        {
            "name": "session-affinity",
            "type": SESSION_AFFINITY_SCORER,
            "parameters": {"max_queue_depth": 32, "max_kv_usage": 0.9},
        },
        {
            "name": "queue-depth",
            "type": QUEUE_DEPTH_SCORER,
            "parameters": {"half_score_depth": 8},
        },
        {"name": "kv-utilization", "type": KV_UTILIZATION_SCORER},
        {"name": "max-score", "type": MAX_SCORE_PICKER},
    ],
    "profile": {
        "filters": ["not-draining", "healthy", "serves-model", "fits-context", "kv-cap"],
        "scorers": [
            {"plugin": "prefix-affinity", "weight": 2},
            {"plugin": "session-affinity", "weight": 2},
            {"plugin": "queue-depth", "weight": 3},
            {"plugin": "kv-utilization", "weight": 1},
        ],
        "picker": "max-score",
    },
}

DEFAULT_PROFILE: Profile = load_profile(DEFAULT_PROFILE_DOC, source="default profile")
