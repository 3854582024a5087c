"""Fixtures for the fault proxy: the server running in-process on its own uvloop thread (real sockets
on 127.0.0.1, API on port 0), clients for its API, and upstream TCP servers beside it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import httpx
import pytest
from aftershock.faultproxy.client import ToxiproxyClient
from aftershock.faultproxy.server import FaultProxyServer
from aftershock.faultproxy.settings import FaultProxySettings
from aftershock.ports import free_port
from toxiproxy import Toxiproxy

from tests.faultproxy.support import HOST, Behaviour, LoopThread, Upstream


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="session")
def fault_server(loop_thread: LoopThread) -> Iterator[FaultProxyServer]:
    settings = FaultProxySettings(host=HOST, port=0, metrics_port=free_port(), shutdown_grace_s=1)
    server = FaultProxyServer(settings)
    loop_thread.run(server.start())
    yield server
    loop_thread.run(server.stop())


@pytest.fixture
def api(fault_server: FaultProxyServer) -> Iterator[httpx.Client]:
    """Plain HTTP to the API; every proxy is deleted after the test."""
    with httpx.Client(base_url=fault_server.url, timeout=5) as client:
        yield client
        for name in client.get("/proxies").json():
            client.delete(f"/proxies/{name}")


@pytest.fixture
def tp(api: httpx.Client, fault_server: FaultProxyServer) -> Toxiproxy:
    """toxiproxy-python, exactly as drills use it against the real server."""
    client = Toxiproxy()
    client.update_api_consumer(HOST, fault_server.api_port)
    return client


@pytest.fixture
def wrapped(api: httpx.Client, fault_server: FaultProxyServer) -> ToxiproxyClient:
    return ToxiproxyClient(HOST, fault_server.api_port, timeout_s=5)


@pytest.fixture
def upstream(loop_thread: LoopThread) -> Iterator[Callable[[Behaviour], Upstream]]:
    """Start upstream servers with a behaviour (echo, send_then(...), sink); closed after the test."""
    started: list[Upstream] = []

    def start(behaviour: Behaviour) -> Upstream:
        up = Upstream()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up.connected.set()
            await behaviour(up, reader, writer)

        async def listen() -> asyncio.Server:
            return await asyncio.start_server(handle, HOST, 0)

        up.server = loop_thread.run(listen())
        up.port = up.server.sockets[0].getsockname()[1]
        started.append(up)
        return up

    yield start
    for up in started:
        assert up.server is not None
        up.server.close()
