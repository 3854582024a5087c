"""Serving a registry on its own /metrics port (never on the public edge port)."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics import exposition as openmetrics

log = logging.getLogger(__name__)


def render(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The exposition body and content type for a scraper's Accept header.

    OpenMetrics (which carries exemplars) when asked for. prometheus_client 0.26 escapes ':' in
    OpenMetrics *sample* lines under its default "underscores" escaping (client_python#1177), so
    vllm:* series would reach Prometheus as vllm_*; "allow-utf-8" leaves names that are valid
    classic Prometheus names, colons included, exactly as they are.
    """
    if "application/openmetrics-text" in accept:
        body: bytes = openmetrics.generate_latest(registry, escaping=openmetrics.ALLOWUTF8)  # type: ignore[no-untyped-call]
        return body, openmetrics.CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4


def _handler(registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class MetricsHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body, content_type = render(registry, self.headers.get("Accept", ""))
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    return MetricsHandler


def start_metrics_server(port: int, host: str, registry: CollectorRegistry) -> int:
    """Serve /metrics from a daemon thread; returns the bound port (0 when switched off)."""
    if port == 0:
        return 0
    server = ThreadingHTTPServer((host, port), _handler(registry))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    bound: int = server.server_address[1]
    log.info("metrics serving", extra={"metrics_port": bound})
    return bound
