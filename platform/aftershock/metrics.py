"""Every Prometheus metric Aftershock exports, defined in one place.

Each service builds its own set on its own registry (tests run several services in one process).
Names carry the `aftershock_` prefix and a unit suffix; labels are bounded: `model` is a name from
the registry or engine config (never raw client input), `replica`/`target` come from config, `code`
is a gRPC status name. The inference service also exports vLLM's own `vllm:*` names so dashboards
read the same on the simulator and on a GPU.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

# Request latency at a hop, seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Time to first token, seconds; 0.5 and 1.0 are SLO thresholds used by alerts/.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
# Time between tokens as a client sees them, seconds.
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)

UNKNOWN_MODEL = "unknown"


def new_registry() -> CollectorRegistry:
    """A registry with the process collector, so every /metrics port shows CPU and RSS."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    return registry


class HopMetrics:
    """Rate, errors and duration at one hop (edge, backend or inference)."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self.service = service
        self.registry = registry
        self.requests_total = Counter(
            "aftershock_requests",
            "Requests finished at this hop, by model and gRPC status code name.",
            ["service", "model", "code"],
            registry=registry,
        )
        self.request_duration_seconds = Histogram(
            "aftershock_request_duration_seconds",
            "Time from arrival at this hop to the last byte of the answer.",
            ["service", "model", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight_requests = Gauge(
            "aftershock_in_flight_requests",
            "Requests being served at this hop now.",
            ["service"],
            registry=registry,
        )
        self.shed_requests_total = Counter(
            "aftershock_shed_requests",
            "Requests refused at this hop because its in-flight bound was reached.",
            ["service"],
            registry=registry,
        )
        self.output_tokens_total = Counter(
            "aftershock_output_tokens",
            "Completion tokens delivered by this hop.",
            ["service", "model"],
            registry=registry,
        )
        self.redis_up = Gauge(
            "aftershock_redis_up",
            "1 when the last Redis call of this client succeeded, else 0 (dedupe and rate limits then "
            "fail open). Absent when the service has no Redis configured.",
            ["client"],
            registry=registry,
        )
        self.in_flight = self.in_flight_requests.labels(service)


class EdgeMetrics(HopMetrics):
    """The edge adds what the client perceives."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__("edge", registry)
        self.time_to_first_token_seconds = Histogram(
            "aftershock_time_to_first_token_seconds",
            "Client-perceived time from request arrival at the edge to the first content byte sent.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.inter_token_latency_seconds = Histogram(
            "aftershock_inter_token_latency_seconds",
            "Client-perceived time between consecutive streamed events, divided by tokens carried.",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=registry,
        )
        self.http_responses_total = Counter(
            "aftershock_http_responses",
            "HTTP responses sent by the edge, by status code.",
            ["status"],
            registry=registry,
        )
        self.auth_failures_total = Counter(
            "aftershock_auth_failures",
            "Requests refused by auth, by reason: missing, invalid, model_not_allowed.",
            ["reason"],
            registry=registry,
        )
        self.ratelimit_rejected_total = Counter(
            "aftershock_ratelimit_rejected",
            "Requests refused by a per-key rate limit, by the bucket that was short: requests, tokens.",
            ["bucket"],
            registry=registry,
        )
        self.ratelimit_fail_open_total = Counter(
            "aftershock_ratelimit_fail_open",
            "Requests let through unchecked because Redis failed (redis_error) or is skipped (circuit_open).",
            ["reason"],
            registry=registry,
        )


class BackendMetrics(HopMetrics):
    """Routing and resilience decisions taken by the backend."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__("backend", registry)
        self.upstream_requests_total = Counter(
            "aftershock_upstream_requests",
            "Attempts sent to an inference replica, by outcome code.",
            ["replica", "code"],
            registry=registry,
        )
        self.replica_healthy = Gauge(
            "aftershock_replica_healthy",
            "1 when the replica answers gRPC health with SERVING, else 0.",
            ["model", "replica"],
            registry=registry,
        )
        self.replica_routable = Gauge(
            "aftershock_replica_routable",
            "1 when routing would send the replica a new request now: health SERVING, its breaker "
            "admitting (not ejected) and no Retry-After it asked for still running; else 0.",
            ["model", "replica"],
            registry=registry,
        )
        self.replica_retry_after_total = Counter(
            "aftershock_replica_retry_after",
            "Failed tries whose Retry-After kept that replica out of routing for that long.",
            ["replica", "code"],
            registry=registry,
        )
        self.breaker_state = Gauge(
            "aftershock_breaker_state",
            "Circuit breaker state per downstream target: 0 closed, 1 open, 2 half-open.",
            ["target"],
            registry=registry,
        )
        self.breaker_transitions_total = Counter(
            "aftershock_breaker_transitions",
            "Circuit breaker state changes, by the state entered.",
            ["target", "state"],
            registry=registry,
        )
        self.retries_total = Counter(
            "aftershock_retries",
            "Retries sent, by the gRPC code of the failed try.",
            ["model", "code"],
            registry=registry,
        )
        self.retry_budget_exhausted_total = Counter(
            "aftershock_retry_budget_exhausted",
            "Retries not sent because the retry budget was spent.",
            ["model"],
            registry=registry,
        )
        self.routing_decisions_total = Counter(
            "aftershock_routing_decisions",
            "Replica choices by reason: prefix or session affinity, spill (the preferred replica was "
            "over the load bound), least_loaded (no affinity key), fallback_tier, fallback_model.",
            ["model", "reason"],
            registry=registry,
        )
        self.hedges_total = Counter(
            "aftershock_hedges",
            "Hedged first tokens: started (a second try raced a late first one), won (the hedge "
            "produced the first token), cancelled (the try that lost was cancelled), refused (budget).",
            ["model", "outcome"],
            registry=registry,
        )
        self.failovers_total = Counter(
            "aftershock_failovers",
            "Streams moved to another replica; phase is before_first_token or mid_stream; outcome is "
            "attempted, resumed, or why a mid-stream move was refused (not_deterministic, not_reproducible).",
            ["model", "phase", "outcome"],
            registry=registry,
        )
        self.dedupe_requests_total = Counter(
            "aftershock_dedupe_requests",
            "Keyed requests by dedupe outcome: claimed, joined, replayed, taken_over, conflict, bypassed.",
            ["outcome"],
            registry=registry,
        )
        self.registry_fallback = Gauge(
            "aftershock_registry_fallback",
            "1 when the model registry file is unreadable and the static fallback catalogue is served.",
            registry=registry,
        )


class EngineMetrics:
    """vLLM's own metric names, exported by every engine so dashboards read the same everywhere."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.num_requests_running = Gauge(
            "vllm:num_requests_running", "Requests in the running batch.", ["model_name"], registry=registry
        )
        self.num_requests_waiting = Gauge(
            "vllm:num_requests_waiting", "Requests in the waiting queue.", ["model_name"], registry=registry
        )
        self.kv_cache_usage_perc = Gauge(
            "vllm:kv_cache_usage_perc", "KV cache usage, 0 to 1.", ["model_name"], registry=registry
        )
        self.time_to_first_token_seconds = Histogram(
            "vllm:time_to_first_token_seconds",
            "Engine time to first token.",
            ["model_name"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.inter_token_latency_seconds = Histogram(
            "vllm:inter_token_latency_seconds",
            "Engine time between tokens.",
            ["model_name"],
            buckets=ITL_BUCKETS,
            registry=registry,
        )
        self.e2e_request_latency_seconds = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Engine end-to-end request latency.",
            ["model_name"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.request_queue_time_seconds = Histogram(
            "vllm:request_queue_time_seconds",
            "Time a request spent waiting before it was scheduled.",
            ["model_name"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens_total = Counter(
            "vllm:prompt_tokens", "Prefill tokens processed.", ["model_name"], registry=registry
        )
        self.generation_tokens_total = Counter(
            "vllm:generation_tokens", "Generation tokens produced.", ["model_name"], registry=registry
        )
        self.request_success_total = Counter(
            "vllm:request_success",
            "Finished requests by finish reason (stop, length, abort).",
            ["model_name", "finished_reason"],
            registry=registry,
        )
        # Counted in prompt tokens, as vLLM does (vllm/v1/metrics/loggers.py); vLLM also labels them
        # by `engine` (its engine-core index), which a one-engine replica does not need.
        self.prefix_cache_queries_total = Counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in prompt tokens looked up.",
            ["model_name"],
            registry=registry,
        )
        self.prefix_cache_hits_total = Counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in prompt tokens found cached.",
            ["model_name"],
            registry=registry,
        )
        self.faults_injected_total = Counter(
            "aftershock_engine_faults_injected",
            "Status-level faults injected by the simulator engine.",
            ["model", "kind"],
            registry=registry,
        )


class GpuMetrics:
    """NVML readings; registered only when a GPU exists, so the series are absent (not 0) otherwise."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.utilization_ratio = Gauge(
            "aftershock_gpu_utilization_ratio", "GPU busy fraction, 0 to 1.", ["gpu"], registry=registry
        )
        self.memory_used_bytes = Gauge(
            "aftershock_gpu_memory_used_bytes", "GPU memory in use.", ["gpu"], registry=registry
        )
        self.memory_total_bytes = Gauge(
            "aftershock_gpu_memory_total_bytes", "GPU memory in all.", ["gpu"], registry=registry
        )
        self.nvml_errors_total = Counter(
            "aftershock_gpu_nvml_errors",
            "NVML calls that failed (the reading is skipped, the replica keeps serving), by call.",
            ["call"],
            registry=registry,
        )


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


ENGINE_STATES = ("loading", "ready", "dead")


class EngineStateMetrics:
    """Where the inference replica's engine is: loading (metrics and health up, model not yet),
    ready, or dead (about to exit for a restart). One series per state, the current one at 1, so
    alerts tell a slow load from a replica that is down. `replica` is the replica's name, as the
    backend's registry (and so aftershock_replica_healthy) names it."""

    def __init__(self, registry: CollectorRegistry, replica: str = "") -> None:
        self.engine_state = Gauge(
            "aftershock_engine_state",
            "1 for the engine's current state (loading, ready, dead), 0 for the others.",
            ["replica", "state"],
            registry=registry,
        )
        self._replica = replica

    def set(self, state: str) -> None:
        for name in ENGINE_STATES:
            self.engine_state.labels(self._replica, name).set(1 if name == state else 0)
