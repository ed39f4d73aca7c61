"""Live model-routing config: the router re-reads the mesh config when it changes on disk (or on
`switchyard admin reload`) and applies what routes turns to models without a restart.

    switchyard admin reload          # now; the router also notices an edited file by itself

Reloaded live: `aliases`, `default_model`, `tiers`, `complexity`, `fallbacks`, `versions` (a
model whose section changed gets the file's weights back, rollbacks cleared), and `pools`:
pools added (Envoy gets their clusters and routes over xDS, and their engines may register),
removed (refused while engines of the pool are registered: drain and stop them first), or
changed (models, tokenizers, costs, handles, accelerator). The whole new file is validated
first (an invalid one is refused naming the field, and the running config stays); a file that
also changes anything else (listeners, auth, tenants, tracing...) is refused whole, naming what
needs a restart. Applying swaps the routing between two turns: a turn in flight keeps the choice
it was routed with, the next one sees the new config.

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
LIVE_FIELDS = (*LIVE_KEYS, "pools")  # what a reload changes in the running config


def needs_restart(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The fields that differ between two raw configs outside what reloads live (`pools` is
    live whole: see `pool_changes`)."""
    return [
        key
        for key in sorted(set(old) | set(new))
        if key not in LIVE_KEYS and key != "pools" and old.get(key) != new.get(key)
    ]


def pool_changes(old: MeshConfig, new: MeshConfig) -> list[str]:
    """Pools added, removed or changed (matched by name; paths compared resolved)."""
    a = {p.name: p for p in old.pools}
    b = {p.name: p for p in new.pools}
    out = [f"pools.{n} added" for n in b if n not in a]
    out += [f"pools.{n} removed" for n in a if n not in b]
    for name in (n for n in a if n in b):
        for field in type(a[name]).model_fields:
            if getattr(a[name], field) != getattr(b[name], field):
                out.append(f"pools.{name}.{field}")
    return out


def live_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The live top-level fields that differ (pools aside: `pool_changes`)."""
    return [k for k in LIVE_KEYS if old.get(k) != new.get(k)]


def _with_live_fields(base: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """`base` with the live top-level fields of `live`."""
    out = {k: v for k, v in base.items() if k not in LIVE_KEYS}
    out.update({k: live[k] for k in LIVE_KEYS if k in live})
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
        # The pools the router runs: compared as parsed, since the copy `up` renders spells
        # their paths differently.
        self._pools = load_mesh_config(running or source)
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
                "fallbacks, versions, pools)"
            )
        changed = live_changes(self._baseline, new) + pool_changes(self._pools, cfg)
        if changed:
            self._apply(cfg)  # (it may refuse: then nothing changed)
        self._baseline, self._pools = new, cfg
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
