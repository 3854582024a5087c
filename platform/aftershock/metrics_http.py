"""Serving a registry on its own /metrics port (never on the public edge port)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


def start_metrics_server(port: int, host: str, registry: CollectorRegistry) -> int:
    """Start the exposition thread; returns the bound port (0 when switched off).

    prometheus_client answers in OpenMetrics (with exemplars) when the scraper asks for it.
    """
    if port == 0:
        return 0
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound: int = server.server_port
    log.info("metrics serving", extra={"metrics_port": bound})
    return bound
