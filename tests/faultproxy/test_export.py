"""`aftershock faultproxy --export-api`: a Toxiproxy API's fault state served as the fault proxy's own
gauges, and the local proxy's byte counters under Toxiproxy's own names and labels."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import httpx
import pytest
from aftershock.faultproxy.server import FaultProxyServer
from aftershock.metrics import (
    FAULTPROXY_ENABLED,
    FAULTPROXY_EXPORT_UP,
    FAULTPROXY_TOXICS,
    TOXIPROXY_LINK_LABELS,
)
from aftershock.ports import free_port

from tests.faultproxy.support import Behaviour, Upstream, connect, echo, port_of, round_trip
from tests.polling import wait_for
from tests.scrape import scrape

Start = Callable[[Behaviour], Upstream]
Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _exporter(api_url: str) -> Iterator[int]:
    port = free_port()
    cmd = [sys.executable, "-m", "aftershock", "faultproxy", "--export-api", api_url]
    proc = subprocess.Popen([*cmd, "--metrics-port", str(port)], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _try_scrape(port) is not None, within_s=15)
        yield port
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def _try_scrape(port: int) -> Scrape | None:
    try:
        return scrape(port)
    except httpx.HTTPError:
        return None


@pytest.fixture
def exporter(fault_server: FaultProxyServer) -> Iterator[int]:
    yield from _exporter(fault_server.url)


def _state(samples: Scrape) -> Scrape:
    """The non-zero fault-state samples (the local proxy keeps a removed toxic type at 0)."""
    return {k: v for k, v in samples.items() if k[0] in (FAULTPROXY_ENABLED, FAULTPROXY_TOXICS) and v}


def test_export_reads_the_api_into_the_same_gauges_the_local_proxy_sets(
    api: httpx.Client, fault_server: FaultProxyServer, exporter: int, upstream: Start
) -> None:
    api.post("/proxies", json={"name": "a", "listen": "127.0.0.1:0", "upstream": upstream(echo).address})
    api.post("/proxies", json={"name": "b", "listen": "127.0.0.1:0", "upstream": upstream(echo).address})
    api.post("/proxies/a/toxics", json={"type": "latency", "name": "l1"})
    api.post("/proxies/a/toxics", json={"type": "latency", "name": "l2", "stream": "upstream"})
    api.post("/proxies/a/toxics", json={"type": "reset_peer", "name": "r"})
    api.post("/proxies/b", json={"enabled": False})

    exported = scrape(exporter)
    assert exported[(FAULTPROXY_EXPORT_UP, ())] == 1
    assert exported[(FAULTPROXY_TOXICS, (("proxy", "a"), ("type", "latency")))] == 2
    assert exported[(FAULTPROXY_TOXICS, (("proxy", "a"), ("type", "reset_peer")))] == 1
    assert exported[(FAULTPROXY_ENABLED, (("proxy", "a"),))] == 1
    assert exported[(FAULTPROXY_ENABLED, (("proxy", "b"),))] == 0
    # The same series, values and labels as the proxy's own /metrics.
    assert _state(exported) == _state(scrape(fault_server.metrics_port))

    api.post("/reset")
    assert not any(k[0] == FAULTPROXY_TOXICS for k in _state(scrape(exporter)))


def test_export_says_when_the_api_is_unreachable() -> None:
    for port in _exporter(f"http://127.0.0.1:{free_port()}"):
        samples = scrape(port)
        assert samples[(FAULTPROXY_EXPORT_UP, ())] == 0
        assert not _state(samples)


def test_export_needs_a_metrics_port() -> None:
    cmd = [sys.executable, "-m", "aftershock", "faultproxy", "--export-api", "http://127.0.0.1:1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--metrics-port" in done.stderr


def test_byte_counters_use_toxiproxys_names_and_labels(
    api: httpx.Client, fault_server: FaultProxyServer, upstream: Start
) -> None:
    r = api.post(
        "/proxies", json={"name": "bytes", "listen": "127.0.0.1:0", "upstream": upstream(echo).address}
    )
    listen, up = r.json()["listen"], r.json()["upstream"]
    with connect(port_of(listen)) as sock:
        for _ in range(3):
            round_trip(sock, b"x" * 100)

    def value(name: str, direction: str) -> float | None:
        labels = dict(zip(TOXIPROXY_LINK_LABELS, (direction, "bytes", listen, up), strict=True))
        return scrape(fault_server.metrics_port).get((name, tuple(sorted(labels.items()))))

    for name in ("toxiproxy_proxy_received_bytes_total", "toxiproxy_proxy_sent_bytes_total"):
        for direction in ("upstream", "downstream"):
            wait_for(lambda n=name, d=direction: value(n, d) == 300)  # type: ignore[misc]
