"""Each toxic's effect on real TCP traffic through the proxy, measured from the client and upstream.

Lower bounds are the toxic's promise and are tight (timers may fire a few ms early); upper bounds
leave room for a loaded machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from aftershock.faultproxy.toxics import SlicerToxic
from aftershock.ports import free_port

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
    sink,
)
from tests.polling import wait_for

Start = Callable[[Behaviour], Upstream]
EARLY = 0.006  # timers may fire this much early
SLACK = 0.15  # scheduling delay allowed on a busy machine


def proxy_to(api: httpx.Client, up: Upstream, name: str = "svc") -> int:
    r = api.post("/proxies", json={"name": name, "listen": "127.0.0.1:0", "upstream": up.address})
    assert r.status_code == 201, r.text
    return port_of(r.json()["listen"])


def add_toxic(api: httpx.Client, type_name: str, proxy: str = "svc", **fields: object) -> str:
    r = api.post(f"/proxies/{proxy}/toxics", json={"type": type_name, **fields})
    assert r.status_code == 200, r.text
    name: str = r.json()["name"]
    return name


def test_latency_delays_each_chunk(api: httpx.Client, upstream: Start) -> None:
    port = proxy_to(api, upstream(echo))
    with connect(port) as sock:
        baseline = min(round_trip(sock) for _ in range(3))
    assert baseline < 0.05
    add_toxic(api, "latency", attributes={"latency": 120})
    with connect(port) as sock:
        delays = [round_trip(sock) for _ in range(2)]
    assert all(0.12 - EARLY <= d <= 0.12 + SLACK for d in delays), delays


def test_latency_jitter_varies_within_bounds(api: httpx.Client, upstream: Start) -> None:
    port = proxy_to(api, upstream(echo))
    add_toxic(api, "latency", attributes={"latency": 60, "jitter": 40})
    with connect(port) as sock:
        delays = [round_trip(sock) for _ in range(6)]
    assert all(0.02 - EARLY <= d <= 0.1 + SLACK for d in delays), delays
    assert max(delays) - min(delays) > 0.005, delays


def test_latency_toxics_chain_in_order_and_add_up(api: httpx.Client, upstream: Start) -> None:
    port = proxy_to(api, upstream(echo))
    add_toxic(api, "latency", name="first", attributes={"latency": 50})
    add_toxic(api, "latency", name="second", attributes={"latency": 50})
    with connect(port) as sock:
        assert 0.1 - EARLY <= round_trip(sock) <= 0.1 + SLACK


def test_upstream_and_downstream_streams(api: httpx.Client, upstream: Start) -> None:
    up = upstream(echo)
    port = proxy_to(api, up)

    # Upstream: client -> server data is late at the server.
    add_toxic(api, "latency", stream="upstream", attributes={"latency": 150})
    with connect(port) as sock:
        sent = time.monotonic()
        assert round_trip(sock, b"up") >= 0.15 - EARLY
    assert up.arrivals[-1] - sent >= 0.15 - EARLY
    api.delete("/proxies/svc/toxics/latency_upstream")

    # Downstream: the server gets it at once, the answer is late.
    add_toxic(api, "latency", stream="downstream", attributes={"latency": 150})
    with connect(port) as sock:
        sent = time.monotonic()
        assert round_trip(sock, b"down") >= 0.15 - EARLY
    assert up.arrivals[-1] - sent < 0.1


def test_bandwidth_limits_throughput(api: httpx.Client, upstream: Start) -> None:
    payload = bytes(range(256)) * 400  # 102400 bytes
    port = proxy_to(api, upstream(send_then(payload, close=True)))
    add_toxic(api, "bandwidth", attributes={"rate": 500})  # KB/s: about 0.2 s for the payload
    with connect(port) as sock:
        start = time.monotonic()
        data, _ = recv_until_eof(sock)
        elapsed = time.monotonic() - start
    assert data == payload
    kb_per_s = len(payload) / elapsed / 1000
    assert 300 <= kb_per_s <= 500 * 1.05, kb_per_s


def test_slow_close_delays_the_close(api: httpx.Client, upstream: Start) -> None:
    port = proxy_to(api, upstream(send_then(b"bye", close=True)))
    with connect(port) as sock:
        start = time.monotonic()
        assert recv_until_eof(sock)[0] == b"bye"
        assert time.monotonic() - start < 0.1  # without the toxic the close comes at once
    add_toxic(api, "slow_close", attributes={"delay": 250})
    with connect(port) as sock:
        start = time.monotonic()
        assert recv_exactly(sock, 3) == b"bye"
        data_at = time.monotonic() - start
        assert sock.recv(10) == b""
        closed_at = time.monotonic() - start
    assert data_at < 0.1  # data is not delayed, only the close
    assert 0.25 - EARLY <= closed_at <= 0.25 + SLACK


def test_timeout_drops_data_then_closes(api: httpx.Client, upstream: Start) -> None:
    up = upstream(echo)
    port = proxy_to(api, up)
    add_toxic(api, "timeout", attributes={"timeout": 200})
    with connect(port) as sock:
        start = time.monotonic()
        sock.sendall(b"ping")
        assert sock.recv(10) == b""  # the echo never arrives; the connection closes
        elapsed = time.monotonic() - start
    assert 0.2 - EARLY <= elapsed <= 0.2 + SLACK
    assert bytes(up.received) == b"ping"  # the upstream stream was not touched


def test_timeout_zero_holds_the_connection_until_removed(api: httpx.Client, upstream: Start) -> None:
    port = proxy_to(api, upstream(echo))
    name = add_toxic(api, "timeout", attributes={"timeout": 0})
    with connect(port) as sock:
        sock.sendall(b"ping")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(10)  # neither data nor a close
        sock.settimeout(2)
        # Removing a timeout toxic closes the connections it held, as Toxiproxy does; the dropped
        # data never comes.
        api.delete(f"/proxies/svc/toxics/{name}")
        assert sock.recv(10) == b""


def test_reset_peer_resets_both_sockets(api: httpx.Client, upstream: Start) -> None:
    up = upstream(echo)
    port = proxy_to(api, up)
    add_toxic(api, "reset_peer", attributes={"timeout": 100})
    with connect(port) as sock:
        start = time.monotonic()
        sock.sendall(b"ping")  # the echo arms the downstream toxic
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
        elapsed = time.monotonic() - start
    assert 0.1 - EARLY <= elapsed <= 0.1 + SLACK
    wait_for(lambda: any(isinstance(e, ConnectionResetError) for e in up.errors), within_s=3, every_s=0.005)


def test_reset_peer_waits_for_data(api: httpx.Client, upstream: Start) -> None:
    port = proxy_to(api, upstream(echo))
    add_toxic(api, "reset_peer", stream="upstream", attributes={"timeout": 0})
    with connect(port) as sock:
        sock.settimeout(0.15)
        with pytest.raises(TimeoutError):
            sock.recv(10)  # nothing sent yet: nothing happens
        sock.settimeout(2)
        sock.sendall(b"x")
        with pytest.raises(ConnectionResetError):
            sock.recv(10)


def test_slicer_splits_writes_into_small_reads(api: httpx.Client, upstream: Start) -> None:
    payload = bytes(range(256)) * 8  # one 2048-byte write upstream
    port = proxy_to(api, upstream(send_then(payload, close=True)))
    with connect(port) as sock:
        data, reads = recv_until_eof(sock)
    assert data == payload and len(reads) <= 2

    add_toxic(api, "slicer", attributes={"average_size": 100, "size_variation": 20, "delay": 3000})
    with connect(port) as sock:
        data, reads = recv_until_eof(sock)
    assert data == payload  # nothing lost or reordered
    assert len(reads) >= 8, reads
    assert max(reads) <= 240, reads  # pieces of at most 120 bytes, two at worst read together


def test_slicer_piece_sizes() -> None:
    toxic = SlicerToxic("s", "downstream", 1.0)
    toxic.set_attributes({"average_size": 100, "size_variation": 20})
    for total in (1, 99, 121, 1000, 65536):
        bounds = toxic._bounds(0, total)
        pieces = [bounds[i + 1] - bounds[i] for i in range(0, len(bounds), 2)]
        assert bounds[0] == 0 and bounds[-1] == total
        assert all(bounds[i] == bounds[i + 1] for i in range(1, len(bounds) - 1, 2))  # contiguous
        assert all(0 < p <= 120 for p in pieces), pieces


def test_limit_data_downstream_cuts_at_exactly_n_bytes(api: httpx.Client, upstream: Start) -> None:
    payload = b"0123456789" * 500
    port = proxy_to(api, upstream(send_then(payload, close=False)))
    add_toxic(api, "limit_data", attributes={"bytes": 1234})
    with connect(port) as sock:
        data, _ = recv_until_eof(sock)
    assert data == payload[:1234]


def test_limit_data_upstream_counts_across_writes(api: httpx.Client, upstream: Start) -> None:
    up = upstream(sink)
    port = proxy_to(api, up)
    add_toxic(api, "limit_data", stream="upstream", attributes={"bytes": 300})
    with connect(port) as sock:
        for i in range(4):
            sock.sendall(bytes([65 + i]) * 100)
            time.sleep(0.01)  # separate chunks, so the count runs across them
        sock.settimeout(2)
        try:
            assert sock.recv(10) == b""
        except ConnectionResetError:
            pass  # unread bytes at close may turn the FIN into a RST
    wait_for(lambda: up.eof_at or up.errors, within_s=3, every_s=0.005)
    assert bytes(up.received) == b"A" * 100 + b"B" * 100 + b"C" * 100


def test_toxicity_zero_and_one(api: httpx.Client, upstream: Start) -> None:
    port = proxy_to(api, upstream(echo))
    name = add_toxic(api, "latency", toxicity=0, attributes={"latency": 200})
    with connect(port) as sock:
        assert round_trip(sock) < 0.1
    api.patch(f"/proxies/svc/toxics/{name}", json={"toxicity": 1})
    with connect(port) as sock:
        assert round_trip(sock) >= 0.2 - EARLY


async def test_toxicity_is_decided_per_connection(api: httpx.Client, upstream: Start) -> None:
    port = proxy_to(api, upstream(echo))
    add_toxic(api, "latency", toxicity=0.5, attributes={"latency": 150})

    async def two_pings(i: int) -> list[float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            times = []
            for _ in range(2):
                start = time.monotonic()
                writer.write(b"%03d" % i)
                assert await reader.readexactly(3) == b"%03d" % i
                times.append(time.monotonic() - start)
            return times
        finally:
            writer.close()

    results = await asyncio.gather(*(two_pings(i) for i in range(24)))
    slow = [all(t >= 0.15 - EARLY for t in times) for times in results]
    fast = [all(t < 0.1 for t in times) for times in results]
    # Each connection is either delayed on both pings or on neither; about half are delayed
    # (all 24 on one side has a chance of 1 in 8 million).
    assert all(s or f for s, f in zip(slow, fast, strict=True)), results
    assert 0 < sum(slow) < 24


def test_unreachable_upstream_closes_the_client(api: httpx.Client) -> None:
    r = api.post(
        "/proxies", json={"name": "dead", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{free_port()}"}
    )
    with connect(port_of(r.json()["listen"])) as sock:
        sock.settimeout(2)
        start = time.monotonic()
        assert sock.recv(10) == b""  # accepted, then closed once the dial fails
        assert time.monotonic() - start < 1
