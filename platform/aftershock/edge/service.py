"""Runs the edge under uvicorn (uvloop + httptools, access log off: our JSON request log is the log)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator

import uvicorn
from prometheus_client import CollectorRegistry

from aftershock import heap
from aftershock.edge import ratelimit
from aftershock.edge.app import create_app
from aftershock.edge.auth import Authenticator
from aftershock.edge.backend_client import BackendClient
from aftershock.edge.ratelimit import RateLimiter
from aftershock.edge.settings import EdgeSettings
from aftershock.metrics import EdgeMetrics, new_registry
from aftershock.metrics_http import start_metrics_server

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn re-raises the stop signal after draining, so the process would die of SIGTERM;
    we stop it ourselves (should_exit) and exit 0 once open streams have drained."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build(
    settings: EdgeSettings, registry: CollectorRegistry | None = None
) -> tuple[uvicorn.Server, BackendClient]:
    registry = registry if registry is not None else new_registry()
    metrics = EdgeMetrics(registry)
    backend = BackendClient(settings.backend_target, settings.models_cache_s, settings.backend_channels)
    limiter = RateLimiter(
        settings.ratelimit_config(),
        redis_up=metrics.redis_up.labels(ratelimit.REDIS_CLIENT),
        fail_open_total=metrics.ratelimit_fail_open_total,
        rejected_total=metrics.ratelimit_rejected_total,
    )
    # Keys are read once here: a bad key file stops the edge at start, not at the first request.
    auth = Authenticator(settings.auth_config(), failures_total=metrics.auth_failures_total)
    app = create_app(settings, backend, metrics, auth, limiter)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="none",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_keep_alive=settings.keep_alive_s,  # uvicorn's default is 5 s
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        lifespan="on",  # starts and stops the rate limiter's Redis client
    )
    return _Server(config), backend


def _reuse_port_socket(settings: EdgeSettings) -> socket.socket:
    """The HTTP port bound with SO_REUSEPORT, so the supervisor's workers share it (uvicorn binds
    without it, and its own --workers shares one socket whose accepts wake every worker)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, settings.port))
    return sock


async def run(settings: EdgeSettings) -> None:
    registry = new_registry()
    server, backend = build(settings, registry)
    start_metrics_server(settings.metrics_port, settings.host, registry)
    log.info("edge serving", extra={"port": settings.port, "backend": settings.backend_target})
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Stop accepting, then drain open streams for up to the grace period.
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    heap.prepare_for_serving()  # the app is built; uvicorn's start-up adds little
    try:
        await server.serve(sockets=[_reuse_port_socket(settings)] if settings.reuse_port else None)
    finally:
        await backend.close()
