"""Live model-routing config: the router re-reads the mesh config when it changes on disk (or on
`switchyard admin reload`) and applies what routes turns to models without a restart.

    switchyard admin reload          # now; the router also notices an edited file by itself

Reloaded live: `aliases`, `default_model`, `tiers`, `complexity`, `fallbacks`, `versions` (a
model whose section changed gets the file's weights back, rollbacks cleared), and each pool's
`cost` and its models' `handles`. The whole new file is validated first (an invalid one is
refused naming the field, and the running config stays); a file that also changes anything else
(pools, engines, listeners, auth...) is refused whole, naming what needs a restart. Applying
swaps the resolver, tiers and fallbacks between two turns: a turn in flight keeps the choice it
was routed with, the next one sees the new config. None of these keys shape Envoy's config
(pools are routed by header), so nothing is pushed over xDS for them.

Under `switchyard up` the file watched is the one `up` was given (it runs the router on a copy
with its ports and paths filled in); a router run alone watches its own `--config`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import Counter

from services.common.config import expand_env
from services.common.errors import ConfigError, FailedPrecondition, InvalidArgument
from services.router.config import MeshConfig, load_mesh_config

log = logging.getLogger(__name__)

RELOADS = Counter(
    "switchyard_router_config_reloads_total",
    "Mesh config reloads: applied, unchanged, invalid, or needs_restart (refused whole).",
    ["result"],
)
LIVE_KEYS = ("aliases", "default_model", "tiers", "complexity", "fallbacks", "versions")
LIVE_POOL_KEYS = ("cost",)
LIVE_MODEL_KEYS = ("handles",)


def needs_restart(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The fields that differ between two raw configs outside what reloads live."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        if key in LIVE_KEYS:
            continue
        if key == "pools":
            out += _pools_differ(old.get(key) or [], new.get(key) or [])
        elif old.get(key) != new.get(key):
            out.append(key)
    return out


def _pools_differ(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    if len(old) != len(new):
        return ["pools (added or removed)"]
    out: list[str] = []
    for i, (a, b) in enumerate(zip(old, new, strict=True)):
        for key in sorted(set(a) | set(b)):
            if key in LIVE_POOL_KEYS:
                continue
            if key != "models":
                if a.get(key) != b.get(key):
                    out.append(f"pools[{i}].{key}")
                continue
            ma, mb = a.get(key) or [], b.get(key) or []
            if len(ma) != len(mb):
                out.append(f"pools[{i}].models")
                continue
            for j, (x, y) in enumerate(zip(ma, mb, strict=True)):
                for k in sorted(set(x) | set(y)):
                    if k not in LIVE_MODEL_KEYS and x.get(k) != y.get(k):
                        out.append(f"pools[{i}].models[{j}].{k}")
    return out


def live_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The live fields that differ (what a reload applies)."""
    out = [k for k in LIVE_KEYS if old.get(k) != new.get(k)]
    for i, (a, b) in enumerate(zip(old.get("pools") or [], new.get("pools") or [], strict=False)):
        out += [f"pools[{i}].{k}" for k in LIVE_POOL_KEYS if a.get(k) != b.get(k)]
        for j, (x, y) in enumerate(zip(a.get("models") or [], b.get("models") or [], strict=False)):
            out += [f"pools[{i}].models[{j}].{k}" for k in LIVE_MODEL_KEYS if x.get(k) != y.get(k)]
    return out


def _with_live_fields(base: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """`base` with the live fields of `live` (pools matched by position)."""
    out = {k: v for k, v in base.items() if k not in LIVE_KEYS}
    out.update({k: live[k] for k in LIVE_KEYS if k in live})
    pools = []
    for i, pool in enumerate(base.get("pools") or []):
        other = (live.get("pools") or [])[i] if i < len(live.get("pools") or []) else {}
        p = {k: v for k, v in pool.items() if k not in LIVE_POOL_KEYS}
        p.update({k: other[k] for k in LIVE_POOL_KEYS if k in other})
        models = []
        for j, model in enumerate(pool.get("models") or []):
            om = (other.get("models") or [])[j] if j < len(other.get("models") or []) else {}
            m = {k: v for k, v in model.items() if k not in LIVE_MODEL_KEYS}
            m.update({k: om[k] for k in LIVE_MODEL_KEYS if k in om})
            models.append(m)
        if "models" in pool:
            p["models"] = models
        pools.append(p)
    if "pools" in base:
        out["pools"] = pools
    return out


def _raw(path: Path) -> dict[str, Any]:
    try:
        data = expand_env(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ConfigError) as e:
        raise InvalidArgument(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path}: not a YAML mapping")
    return data


class ConfigReloader:
    """Watches the mesh config file and applies its live fields through `apply`."""

    def __init__(
        self,
        source: Path,
        apply: Callable[[MeshConfig], None],
        running: Path | None = None,
    ) -> None:
        """`running`: the config file the router runs when it is not `source` itself (the copy
        `up` renders): its live fields are the baseline, so that the first reload applies what
        `source` changed since (a router restarted after an edit)."""
        self.source = source
        self._apply = apply
        self._baseline = _raw(source)
        if running is not None:
            self._baseline = _with_live_fields(self._baseline, _raw(running))
        self._mtime = self._stat()

    def _stat(self) -> float:
        try:
            return self.source.stat().st_mtime
        except OSError:
            return 0.0

    def reload(self) -> list[str]:
        """Apply the file's live fields now; returns what changed. Raises InvalidArgument (the
        file is invalid) or FailedPrecondition (it changes what needs a restart): then nothing
        is applied."""
        self._mtime = self._stat()
        try:
            new = _raw(self.source)
            cfg = load_mesh_config(self.source)
        except (InvalidArgument, ConfigError) as e:
            RELOADS.labels("invalid").inc()
            raise InvalidArgument(
                f"the mesh config is invalid, so nothing was applied: {e}"
            ) from None
        restart = needs_restart(self._baseline, new)
        if restart:
            RELOADS.labels("needs_restart").inc()
            raise FailedPrecondition(
                f"{self.source} changes {', '.join(restart)}, which need a restart of the mesh; "
                "nothing was applied (live: aliases, default_model, tiers, complexity, "
                "fallbacks, versions, pools' cost and models' handles)"
            )
        changed = live_changes(self._baseline, new)
        if changed:
            self._apply(cfg)
        self._baseline = new
        RELOADS.labels("applied" if changed else "unchanged").inc()
        return changed

    async def watch(self, every: float) -> None:
        """Reload whenever the file's modification time changes; log what happened."""
        while True:
            await asyncio.sleep(every)
            if self._stat() == self._mtime:
                continue
            try:
                changed = self.reload()
            except (InvalidArgument, FailedPrecondition) as e:
                log.error("config reload refused: %s", e)
                continue
            if changed:
                log.info("config reloaded from %s: %s", self.source, ", ".join(changed))
