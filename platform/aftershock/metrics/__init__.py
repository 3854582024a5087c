"""Every Prometheus metric Aftershock exports, defined in one place: this package, one module per service.

Each service builds its own set on its own registry (tests run several services in one process).
Names carry the `aftershock_` prefix and a unit suffix; labels are bounded: `model` is a name from
the registry or engine config (never raw client input), `replica`/`target` come from config, `code`
is a gRPC status name. The inference service also exports vLLM's own `vllm:*` names so dashboards
read the same on the simulator and on a GPU.
"""

from aftershock.metrics.backend import BackendMetrics
from aftershock.metrics.common import ITL_BUCKETS, LATENCY_BUCKETS, TTFT_BUCKETS, UNKNOWN_MODEL, new_registry
from aftershock.metrics.engine import ENGINE_STATES, EngineMetrics, EngineStateMetrics, GpuMetrics
from aftershock.metrics.faultproxy import (
    FAULTPROXY_ENABLED,
    FAULTPROXY_EXPORT_UP,
    FAULTPROXY_TOXICS,
    TOXIPROXY_LINK_LABELS,
    FaultProxyMetrics,
)
from aftershock.metrics.hop import EdgeMetrics, HopMetrics

__all__ = [
    "ENGINE_STATES",
    "FAULTPROXY_ENABLED",
    "FAULTPROXY_EXPORT_UP",
    "FAULTPROXY_TOXICS",
    "ITL_BUCKETS",
    "LATENCY_BUCKETS",
    "TOXIPROXY_LINK_LABELS",
    "TTFT_BUCKETS",
    "UNKNOWN_MODEL",
    "BackendMetrics",
    "EdgeMetrics",
    "EngineMetrics",
    "EngineStateMetrics",
    "FaultProxyMetrics",
    "GpuMetrics",
    "HopMetrics",
    "new_registry",
]
