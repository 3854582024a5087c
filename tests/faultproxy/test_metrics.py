"""The metrics port keeps FaultProxyMetrics in step with proxies, toxics and connections."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from aftershock.faultproxy.server import FaultProxyServer

from tests.faultproxy.support import Behaviour, Upstream, connect, echo, port_of, round_trip
from tests.polling import wait_for
from tests.scrape import scrape

Start = Callable[[Behaviour], Upstream]
ENABLED = "aftershock_faultproxy_proxy_enabled"
TOXICS = "aftershock_faultproxy_toxics_active"
CONNECTIONS = "aftershock_faultproxy_connections_total"


def test_metrics_follow_proxies_toxics_and_connections(
    api: httpx.Client, fault_server: FaultProxyServer, upstream: Start
) -> None:
    port = fault_server.metrics_port

    def value(name: str, **labels: str) -> float | None:
        return scrape(port).get((name, tuple(sorted(labels.items()))))

    before = value(CONNECTIONS, proxy="m") or 0.0
    r = api.post("/proxies", json={"name": "m", "listen": "127.0.0.1:0", "upstream": upstream(echo).address})
    assert value(ENABLED, proxy="m") == 1

    for name in ("lat1", "lat2"):
        api.post("/proxies/m/toxics", json={"type": "latency", "name": name})
    api.post(
        "/proxies/m/toxics", json={"type": "timeout", "stream": "upstream", "attributes": {"timeout": 0}}
    )
    assert value(TOXICS, proxy="m", type="latency") == 2
    assert value(TOXICS, proxy="m", type="timeout") == 1
    api.delete("/proxies/m/toxics/timeout_upstream")
    assert value(TOXICS, proxy="m", type="timeout") == 0
    assert value(TOXICS, proxy="m", type="latency") == 2

    for _ in range(2):
        with connect(port_of(r.json()["listen"])) as sock:
            round_trip(sock)
    wait_for(lambda: value(CONNECTIONS, proxy="m") == before + 2, within_s=3, every_s=0.005)

    api.post("/proxies/m", json={"enabled": False})
    assert value(ENABLED, proxy="m") == 0
    api.post("/reset")
    assert value(ENABLED, proxy="m") == 1
    assert value(TOXICS, proxy="m", type="latency") == 0

    api.delete("/proxies/m")
    gone = [key for key in scrape(port) if key[0] in (ENABLED, TOXICS) and ("proxy", "m") in key[1]]
    assert gone == []
