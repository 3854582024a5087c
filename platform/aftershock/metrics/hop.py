"""Per-hop request metrics (every service) and the edge's client-perceived ones."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from aftershock.metrics.common import ITL_BUCKETS, LATENCY_BUCKETS, TTFT_BUCKETS


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
