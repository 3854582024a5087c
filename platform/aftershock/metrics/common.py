"""What every metrics set shares: bucket bounds, the unknown-model label, the registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from aftershock.metrics.gc import GcCollector

# Request latency at a hop, seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Time to first token, seconds; 0.5 and 1.0 are SLO thresholds used by alerts/.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
# Time between tokens as a client sees them, seconds.
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)

UNKNOWN_MODEL = "unknown"


def new_registry() -> CollectorRegistry:
    """A registry with the process and GC collectors: every /metrics port shows CPU, RSS and GC."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    GcCollector(registry)
    return registry
