"""The fault proxy's metrics: its state gauges and Toxiproxy's own byte counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

# Toxiproxy 2.12's labels on its byte counters (collectors/proxy.go), in its order.
TOXIPROXY_LINK_LABELS = ("direction", "proxy", "listener", "upstream")
# The fault proxy's state gauges: the local proxy sets them, `aftershock faultproxy export` reads
# them off a real Toxiproxy's API (whose own metrics have no toxic state).
FAULTPROXY_ENABLED = "aftershock_faultproxy_proxy_enabled"
FAULTPROXY_TOXICS = "aftershock_faultproxy_toxics_active"
FAULTPROXY_EXPORT_UP = "aftershock_faultproxy_export_up"


class FaultProxyMetrics:
    """What the Toxiproxy-API fault proxy is doing, for the resilience dashboard's fault panel."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.proxy_enabled = Gauge(
            FAULTPROXY_ENABLED,
            "1 when the proxy passes traffic.",
            ["proxy"],
            registry=registry,
        )
        self.toxics_active = Gauge(
            FAULTPROXY_TOXICS,
            "Toxics installed on a proxy, by type.",
            ["proxy", "type"],
            registry=registry,
        )
        self.connections_total = Counter(
            "aftershock_faultproxy_connections",
            "Client connections accepted by a proxy.",
            ["proxy"],
            registry=registry,
        )
        # Toxiproxy's own series (its -proxy-metrics), same names and labels, so one byte panel reads
        # either proxy. Toxiproxy adds a link's bytes when it ends; these count as bytes pass.
        self.received_bytes_total = Counter(
            "toxiproxy_proxy_received_bytes",
            "Bytes a proxy read, by direction (upstream: from the client).",
            TOXIPROXY_LINK_LABELS,
            registry=registry,
        )
        self.sent_bytes_total = Counter(
            "toxiproxy_proxy_sent_bytes",
            "Bytes a proxy wrote, by direction (upstream: to the server).",
            TOXIPROXY_LINK_LABELS,
            registry=registry,
        )
