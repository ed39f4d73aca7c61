"""`switchyard status`: the router's Admin.Status, and the processes `switchyard up` supervises,
as tables a person can read."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from switchyard.v1 import router_pb2


def read_up_state(path: Path, router: str | None = None) -> dict[str, Any] | None:
    """The state `switchyard up` keeps (services/mesh/up.py), if an `up` that is still running
    wrote it, for the mesh whose router is `router` when given."""
    try:
        state: dict[str, Any] = json.loads(path.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no file, unreadable, or its `up` is gone
    if router is not None and state.get("router") not in ("", router):
        return None
    return state


def _uptime(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_processes(state: dict[str, Any], now: float | None = None) -> str:
    """The supervised processes: state, restarts, uptime and how the last one ended."""
    now = time.time() if now is None else now
    lines = [f"processes (switchyard up, pid {state.get('pid')}):"]
    for p in state.get("processes", []):
        up = _uptime(now - float(p.get("started_at", now))) if p.get("state") == "running" else "-"
        last = f"  last: {p['last_exit']}" if p.get("last_exit") else ""
        lines.append(
            f"  {p.get('name', '?'):<18} {p.get('kind', '?'):<7} {p.get('state', '?'):<10} "
            f"pid {p.get('pid', 0):<7} restarts {p.get('restarts', 0):>2}  up {up:>7}{last}"
        )
    return "\n".join(lines)


def format_status(resp: router_pb2.StatusResponse) -> str:
    lines = [f"router {resp.router_id}", ""]
    for pool in resp.pools:
        aliases = f", aliases: {', '.join(pool.aliases)}" if pool.aliases else ""
        lines.append(
            f"pool {pool.name} ({pool.accelerator}) models: {', '.join(pool.models)}"
            f"{aliases} — {len(pool.engines)} engine(s); turns {pool.in_flight} in flight of "
            f"{pool.capacity}, {pool.queued} queued, room {pool.free_slots}"
        )
        if pool.scale_reason:
            lines.append(
                f"  engines: {len(pool.engines)} now, {pool.desired_engines} desired "
                f"({pool.scale_reason})"
            )
        if not pool.engines:
            lines.append("  (no engines registered)")
        for e in pool.engines:
            load = e.load
            lines.append(
                f"  {e.engine_id:<18} {e.state:<9} {e.endpoint:<22} running {load.running:>3} "
                f"waiting {load.waiting:>3} in-flight {load.in_flight:>3} "
                f"kv {100 * load.kv_cache_usage:5.1f}% hit {100 * e.cache_hit_rate:5.1f}% "
                f"routed {e.routed_turns:>5} blocks {e.indexed_blocks:>6} "
                f"report {e.seconds_since_report:4.1f}s ago"
            )
        lines.append("")
    if resp.versions:
        lines += format_versions(resp.versions)
        lines.append("")
    lines.append("xDS (per Envoy node):")
    if not resp.xds_nodes:
        lines.append("  (no Envoy connected)")
    for node in resp.xds_nodes:
        lines.append(f"  node {node.node_id}")
        for t in node.types:
            kind = t.type_url.rsplit(".", 1)[-1]
            state = (
                f"NACK: {t.error}"
                if t.nacked
                else ("ACK" if t.version_acked == t.version_sent else "pending")
            )
            lines.append(
                f"    {kind:<22} sent {t.version_sent or '-':<14} "
                f"acked {t.version_acked or '-':<14} {state}"
            )
    return "\n".join(lines)


def format_versions(models: Iterable[router_pb2.VersionedModel]) -> list[str]:
    """Each versioned model's arms: weight (and the config's), the window's turns, failures
    and TTFT p99, and a rollback's reason."""
    lines = []
    for m in models:
        lines.append(f"model {m.model} versions (baseline {m.baseline}):")
        total = sum(a.weight for a in m.arms) or 1.0
        for a in m.arms:
            weight = f"{a.weight:g}" + (
                f" (config {a.configured_weight:g})" if a.weight != a.configured_weight else ""
            )
            p99 = f"{a.window_ttft_p99 * 1000:.0f} ms" if a.window_ttft_p99 else "-"
            lines.append(
                f"  {a.version:<14} pool {a.pool:<14} weight {weight:<16} "
                f"share {100 * a.weight / total:5.1f}%  turns {a.window_turns:>5} "
                f"failed {a.window_failed:>4}  ttft p99 {p99}"
            )
            if a.rolled_back:
                lines.append(f"    ROLLED BACK: {a.rolled_back}")
    return lines


def format_tenants(resp: router_pb2.ListTenantsResponse) -> str:
    """One block per tenant: policy, what its quotas have left, turns and tokens."""
    if not resp.tenants:
        return f"no tenants yet (quota ledger: {resp.ledger})"
    lines = [f"quota ledger: {resp.ledger}"]
    for t in resp.tenants:
        p = t.policy
        quotas = [
            f"{name}={getattr(p.quotas, name)}"
            + (f" ({t.remaining[name]} left)" if name in t.remaining else "")
            for name in p.quotas.DESCRIPTOR.fields_by_name
            if getattr(p.quotas, name)
        ]
        lines.append(
            f"{p.tenant}  [{p.source}]  weight {p.weight:g}  tier {p.tier or '(its keys)'}  "
            f"cache {p.cache_group or 'own'}  response cache "
            + (
                (f"on (ttl {p.response_cache_ttl_seconds:g}s)" if p.response_cache_ttl_seconds
                 else "on")
                if p.response_cache else "off"
            )
        )  # fmt: skip
        lines.append(f"  quotas: {', '.join(quotas) or 'none'}")
        lines.append(
            f"  turns: {t.in_flight} in flight, {t.queued} queued, {t.admitted} admitted, "
            f"{t.over_quota} over quota, {t.waited} waited for a slot, {t.shed} shed; "
            f"{t.tokens} tokens"
        )
    return "\n".join(lines)
