"""Changes made while connections are open: toxics spliced into live chains without losing or
reordering data, and proxies taken down and brought back."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from toxiproxy import Toxiproxy

from tests.faultproxy.support import (
    Behaviour,
    Upstream,
    connect,
    echo,
    port_of,
    recv_exactly,
    recv_until_eof,
    round_trip,
    send_then,
)

Start = Callable[[Behaviour], Upstream]
EARLY = 0.006


def proxy_to(api: httpx.Client, up: Upstream) -> int:
    r = api.post("/proxies", json={"name": "svc", "listen": "127.0.0.1:0", "upstream": up.address})
    return port_of(r.json()["listen"])


def assert_closed(sock: socket.socket) -> None:
    sock.settimeout(2)
    try:
        assert sock.recv(10) == b""
    except ConnectionResetError:
        pass  # a close with unread data in flight may arrive as a reset


def test_toxics_added_updated_and_removed_on_an_open_connection(api: httpx.Client, upstream: Start) -> None:
    port = proxy_to(api, upstream(echo))
    url = "/proxies/svc/toxics/latency_downstream"
    with connect(port) as sock:
        assert round_trip(sock) < 0.05
        api.post("/proxies/svc/toxics", json={"type": "latency", "attributes": {"latency": 100}})
        assert 0.1 - EARLY <= round_trip(sock) < 0.3
        api.patch(url, json={"attributes": {"latency": 200}})
        assert 0.2 - EARLY <= round_trip(sock) < 0.4
        api.delete(url)
        assert round_trip(sock) < 0.05


def test_upstream_toxic_added_behind_a_downstream_one(api: httpx.Client, upstream: Start) -> None:
    up = upstream(echo)
    port = proxy_to(api, up)
    with connect(port) as sock:
        round_trip(sock)
        api.post("/proxies/svc/toxics", json={"type": "latency", "attributes": {"latency": 60}})
        api.post(
            "/proxies/svc/toxics",
            json={"type": "latency", "stream": "upstream", "attributes": {"latency": 60}},
        )
        sent = time.monotonic()
        assert 0.12 - EARLY <= round_trip(sock) < 0.35
        assert up.arrivals[-1] - sent >= 0.06 - EARLY


def test_removing_a_toxic_mid_transfer_loses_nothing(api: httpx.Client, upstream: Start) -> None:
    payload = bytes(range(256)) * 800  # 204800 bytes: 2 s at the rate below
    port = proxy_to(api, upstream(send_then(payload, close=True)))
    api.post("/proxies/svc/toxics", json={"type": "bandwidth", "attributes": {"rate": 100}})
    api.post("/proxies/svc/toxics", json={"type": "slicer", "attributes": {"average_size": 500, "delay": 10}})
    with connect(port) as sock:
        start = time.monotonic()
        head = recv_exactly(sock, 10_000)
        api.delete("/proxies/svc/toxics/bandwidth_downstream")
        api.delete("/proxies/svc/toxics/slicer_downstream")
        rest, _ = recv_until_eof(sock)
        elapsed = time.monotonic() - start
    assert head + rest == payload
    assert elapsed < 1.0  # the rest came at full speed


def test_removing_latency_releases_queued_chunks_in_order(api: httpx.Client, upstream: Start) -> None:
    port = proxy_to(api, upstream(echo))
    api.post("/proxies/svc/toxics", json={"type": "latency", "attributes": {"latency": 2000}})
    with connect(port) as sock:
        for i in range(20):
            sock.sendall(b"%02d" % i)
            time.sleep(0.002)
        start = time.monotonic()
        api.delete("/proxies/svc/toxics/latency_downstream")
        data = recv_exactly(sock, 40)
        assert time.monotonic() - start < 0.5
    assert data == b"".join(b"%02d" % i for i in range(20))


def test_disabled_proxy_refuses_and_closes_open_connections(tp: Toxiproxy, upstream: Start) -> None:
    proxy = tp.create(upstream=upstream(echo).address, name="svc")
    port = port_of(proxy.listen)
    with connect(port) as sock:
        round_trip(sock)
        proxy.disable()
        assert tp.get_proxy("svc").enabled is False
        assert_closed(sock)
    with pytest.raises(ConnectionRefusedError):
        connect(port)

    proxy.enable()  # listens again, on the same port
    with connect(port) as sock:
        assert round_trip(sock) < 0.3

    with proxy.down():
        with pytest.raises(ConnectionRefusedError):
            connect(port)
    with connect(port) as sock:
        assert round_trip(sock) < 0.3


def test_deleting_a_proxy_closes_its_connections(api: httpx.Client, upstream: Start) -> None:
    port = proxy_to(api, upstream(echo))
    with connect(port) as sock:
        round_trip(sock)
        assert api.delete("/proxies/svc").status_code == 204
        assert_closed(sock)


def test_many_connections_in_parallel(api: httpx.Client, upstream: Start) -> None:
    port = proxy_to(api, upstream(echo))
    api.post("/proxies/svc/toxics", json={"type": "latency", "attributes": {"latency": 100}})
    errors: list[BaseException] = []
    times: list[float] = []

    def client(i: int) -> None:
        try:
            with connect(port) as sock:
                times.append(round_trip(sock, b"client-%02d" % i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert errors == []
    assert len(times) == 16 and min(times) >= 0.1 - EARLY
    assert time.monotonic() - start < 1.0  # delays overlap: connections do not queue behind each other
