"""`switchyard status`: the router's Admin.Status as tables a person can read."""

from __future__ import annotations

from switchyard.v1 import router_pb2


def format_status(resp: router_pb2.StatusResponse) -> str:
    lines = [f"router {resp.router_id}", ""]
    for pool in resp.pools:
        aliases = f", aliases: {', '.join(pool.aliases)}" if pool.aliases else ""
        lines.append(
            f"pool {pool.name} ({pool.accelerator}) models: {', '.join(pool.models)}"
            f"{aliases} — {len(pool.engines)} engine(s)"
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
