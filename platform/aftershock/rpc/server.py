"""Running a grpc.aio server with health, metrics port and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

log = logging.getLogger(__name__)

# Generous limits: a non-streamed completion travels as one message.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    # Clients reconnect every few minutes (open streams finish first: the grace is unbounded), so
    # replicas added behind one Service address start getting traffic from existing clients.
    ("grpc.max_connection_age_ms", 300_000),
)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: health_aio.HealthServicer
    port: int
    service_names: tuple[str, ...]

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def shutdown(self, grace_s: float, busy: Callable[[], int] = lambda: 0) -> None:
        """NOT_SERVING first so routers stop sending, then refuse new RPCs and drain in-flight ones.

        `busy` counts the requests worth waiting for: long-lived streams such as a router's health
        Watch would otherwise hold the process for the whole grace period, so once the real work
        has drained the rest is cancelled.
        """
        await self.set_serving(False)
        loop = asyncio.get_running_loop()
        # stop(0) can crash grpcio 1.85 after serving calls; None (no grace) does the same safely.
        stopping = asyncio.ensure_future(self.server.stop(grace_s or None))
        deadline = loop.time() + grace_s
        while busy() and loop.time() < deadline and not stopping.done():  # noqa: ASYNC110 - a counter, no event
            await asyncio.sleep(0.05)
        await self.server.stop(None)
        await stopping


async def start_server(
    *,
    host: str,
    port: int,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    serving: bool = True,
) -> RunningServer:
    """`serving=False` starts with health NOT_SERVING (a replica still loading its model)."""
    server = grpc.aio.server(interceptors=list(interceptors), options=SERVER_OPTIONS)
    register(server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {host}:{port}")
    await server.start()
    running = RunningServer(server, health, bound, tuple(service_names))
    await running.set_serving(serving)
    return running


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
