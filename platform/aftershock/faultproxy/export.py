"""`aftershock faultproxy --export-api URL`: a real Toxiproxy's fault state as the fault proxy's gauges.

Toxiproxy 2.12's own metrics (`-proxy-metrics`) are byte counters only; whether a proxy is disabled
or carries toxics is in its HTTP API alone. So beside a real Toxiproxy (compose, the staging
overlay) this reads GET /proxies on every scrape and serves the gauges the local fault proxy sets
itself; the fault-injection alert and panels then read one set of series wherever they run.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import httpx
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aftershock.metrics import FAULTPROXY_ENABLED, FAULTPROXY_EXPORT_UP, FAULTPROXY_TOXICS

log = logging.getLogger(__name__)


class ToxiproxyStateCollector(Collector):
    """Reads a Toxiproxy API at scrape time, so the state is never older than the scrape."""

    def __init__(self, api_url: str, timeout_s: float = 2.0) -> None:
        self._api_url = api_url.rstrip("/")
        self._timeout_s = timeout_s

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(FAULTPROXY_EXPORT_UP, "1 when the last read of the Toxiproxy API worked.")
        try:
            resp = httpx.get(f"{self._api_url}/proxies", timeout=self._timeout_s)
            resp.raise_for_status()
            proxies = resp.json()
            if not isinstance(proxies, dict):
                raise ValueError("GET /proxies did not answer an object")
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("cannot read the Toxiproxy API", extra={"api": self._api_url, "error": str(exc)})
            up.add_metric([], 0.0)
            yield up
            return
        enabled = GaugeMetricFamily(FAULTPROXY_ENABLED, "1 when the proxy passes traffic.", labels=["proxy"])
        toxics = GaugeMetricFamily(
            FAULTPROXY_TOXICS, "Toxics installed on a proxy, by type.", labels=["proxy", "type"]
        )
        for name, proxy in sorted(proxies.items()):
            enabled.add_metric([name], 1.0 if proxy.get("enabled") else 0.0)
            counts = collections.Counter(str(t.get("type")) for t in proxy.get("toxics") or [])
            for type_name, count in sorted(counts.items()):
                toxics.add_metric([name, type_name], float(count))
        up.add_metric([], 1.0)
        yield enabled
        yield toxics
        yield up


def run(api_url: str, host: str, metrics_port: int) -> int:
    """Serve /metrics for the Toxiproxy at `api_url` until SIGTERM or SIGINT."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ToxiproxyStateCollector(api_url))
    server, thread = start_http_server(metrics_port, host, registry)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    log.info("exporting Toxiproxy state", extra={"api": api_url, "metrics_port": server.server_port})
    stop.wait()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    return 0
