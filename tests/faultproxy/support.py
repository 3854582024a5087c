"""Test support for the fault proxy: an event-loop thread, upstream TCP servers with recorded
behaviour, and blocking-socket helpers (the test thread plays the proxied client)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import uvloop

T = TypeVar("T")
HOST = "127.0.0.1"


class LoopThread:
    """An event loop on a daemon thread, so the blocking toxiproxy-python client and blocking test
    sockets can talk to the server without sharing a loop with it."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="faultproxy-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 10.0) -> T:
        async def wrapper() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@dataclass
class Upstream:
    """A TCP server standing in for the proxied service; what it saw is recorded for the tests."""

    port: int = 0
    received: bytearray = field(default_factory=bytearray)
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each read
    errors: list[BaseException] = field(default_factory=list)
    eof_at: list[float] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)
    server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        try:
            data = await reader.read(65536)
        except OSError as exc:
            self.errors.append(exc)
            return b""
        if data:
            self.arrivals.append(time.monotonic())
            self.received += data
        else:
            self.eof_at.append(time.monotonic())
        return data


Behaviour = Callable[[Upstream, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await up._read(reader):
        writer.write(data)
        try:
            await writer.drain()
        except OSError as exc:
            up.errors.append(exc)
            break
    writer.close()


def send_then(payload: bytes, *, close: bool) -> Behaviour:
    """Sends `payload` at once, then closes, or keeps reading until the client goes."""

    async def behaviour(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        if not close:
            while await up._read(reader):
                pass
        writer.close()

    return behaviour


async def sink(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await up._read(reader):
        pass
    writer.close()


# Blocking client helpers: the test thread plays the proxied client.


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise EOFError(f"closed after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


def recv_until_eof(sock: socket.socket) -> tuple[bytes, list[int]]:
    """Everything until the peer closes, and the size of each read."""
    buf, reads = bytearray(), []
    while data := sock.recv(65536):
        buf += data
        reads.append(len(data))
    return bytes(buf), reads


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> float:
    """Seconds for `payload` to come back through an echo upstream."""
    start = time.monotonic()
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload
    return time.monotonic() - start
