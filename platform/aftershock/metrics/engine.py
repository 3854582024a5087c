"""The inference service's metrics: vLLM's own `vllm:*` names, GPU (NVML) and the engine's state."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from aftershock.metrics.common import ITL_BUCKETS, LATENCY_BUCKETS, TTFT_BUCKETS


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
            "aftershock_gpu_memory_used_bytes",
            "GPU memory in use, as nvidia-smi counts it (the driver's own reserve left out).",
            ["gpu"],
            registry=registry,
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
