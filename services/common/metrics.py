"""Prometheus `/metrics` over HTTP, served from a daemon thread of the service process."""

from __future__ import annotations

import prometheus_client


def start_metrics_server(host: str, port: int) -> int:
    """Serve the default registry (ours plus anything a library registered, e.g. vLLM's
    `vllm:*` metrics) on http://host:port/metrics; returns the bound port (port 0 picks one)."""
    httpd, _thread = prometheus_client.start_http_server(port, addr=host)
    return int(httpd.server_port)
