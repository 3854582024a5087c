"""The backend's metrics: upstream tries, replica health, breakers, retries, failover, dedupe, routing."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from aftershock.metrics.hop import HopMetrics


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
