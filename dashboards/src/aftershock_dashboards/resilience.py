"""Resilience: are the guards working? Breakers, retries and their budget, failover, dedupe,
replica and Redis health, load shedding, and the faults currently injected.

Counters here count events (a retry, a failover, a transition), so their series exist only after the
first event; those queries fall back to 0 so "nothing happened" reads as 0, not as "No data".
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.models import dashboard

from . import base, promql
from .panels import (
    COUNT,
    PER_SEC,
    RATIO,
    REQ_PER_SEC,
    Q,
    stat_panel,
    state_panel,
    timeseries_panel,
    value_map,
)
from .promql import MODEL, agg, increase, rate, sum_by, zero_if_absent

UID = "aftershock-resilience"
TITLE = "Aftershock / Resilience"

BREAKER_STATES = value_map({0: ("closed", "green"), 1: ("open", "red"), 2: ("half-open", "orange")})
UP_DOWN = value_map({0: ("down", "red"), 1: ("up", "green")})
HEALTHY = value_map({0: ("unhealthy", "red"), 1: ("healthy", "green")})
REGISTRY = value_map({0: ("registry file", "green"), 1: ("static fallback", "orange")})
PROXY = value_map({0: ("disabled (down)", "red"), 1: ("enabled", "green")})
# Any count above zero is a problem worth colouring red.
ANY_RED = ((1, "red"),)


def _summary_row(builder: dashboard_b.Dashboard) -> dashboard_b.Dashboard:
    return (
        builder.with_row(dashboard_b.Row("Now"))
        .with_panel(
            stat_panel(
                "Open breakers",
                Q(zero_if_absent("count(aftershock_breaker_state == 1)")),
                unit=COUNT,
                description="Circuit breakers in the open state (one per backend process and target).",
                thresholds=ANY_RED,
            )
        )
        .with_panel(
            stat_panel(
                "Unhealthy replicas",
                Q(zero_if_absent("count(min by (model, replica) (aftershock_replica_healthy) == 0)")),
                unit=COUNT,
                description="Inference replicas that at least one backend sees as not SERVING.",
                thresholds=ANY_RED,
            )
        )
        .with_panel(
            stat_panel(
                "Redis",
                Q("min(aftershock_redis_up)"),
                unit=COUNT,
                description="Whether the backends' last Redis call succeeded (worst backend). While down, "
                "dedupe fails open: requests are served, duplicates are not suppressed.",
                mappings=UP_DOWN,
                base="red",
                thresholds=((1, "green"),),
            )
        )
        .with_panel(
            stat_panel(
                "Model registry",
                Q("max(aftershock_registry_fallback)"),
                unit=COUNT,
                description="Whether any backend serves the static fallback catalogue because the registry "
                "file is unreadable.",
                mappings=REGISTRY,
                thresholds=((1, "orange"),),
            )
        )
        .with_panel(
            stat_panel(
                "Active toxics",
                Q(zero_if_absent("sum(aftershock_faultproxy_toxics_active)")),
                unit=COUNT,
                description="Toxics installed on the fault proxies right now (latency, timeout, "
                "reset_peer...).",
                thresholds=((1, "orange"),),
            )
        )
        .with_panel(
            stat_panel(
                "Disabled proxies",
                Q(zero_if_absent("count(aftershock_faultproxy_proxy_enabled == 0)")),
                unit=COUNT,
                description="Fault proxies switched off, i.e. a hop that is down on purpose.",
                thresholds=ANY_RED,
            )
        )
    )


def _breaker_row(builder: dashboard_b.Dashboard) -> dashboard_b.Dashboard:
    return (
        builder.with_row(dashboard_b.Row("Circuit breakers"))
        .with_panel(
            state_panel(
                "Breaker state per target",
                [Q(agg("max", "aftershock_breaker_state", ("target",)), "{{target}}")],
                description="Closed (green), open (red: calls fail fast with UNAVAILABLE) or half-open "
                "(orange: a few trial calls). Worst state across backend processes.",
                mappings=BREAKER_STATES,
                width=16,
            )
        )
        .with_panel(
            timeseries_panel(
                "Breaker transitions",
                [
                    Q(
                        zero_if_absent(
                            sum_by(increase("aftershock_breaker_transitions_total"), "target", "state")
                        ),
                        "{{target}} -> {{state}}",
                    )
                ],
                unit=COUNT,
                description="State changes in each interval, by target and the state entered. Flapping "
                "between open and half-open means the target is still failing its trial calls.",
                bars=True,
                width=8,
            )
        )
    )


def _retry_row(builder: dashboard_b.Dashboard) -> dashboard_b.Dashboard:
    backend_requests_rate = rate("aftershock_requests_total", 'service="backend"', MODEL)
    return (
        builder.with_row(dashboard_b.Row("Retries & failover"))
        .with_panel(
            timeseries_panel(
                "Retries by code",
                [Q(zero_if_absent(sum_by(rate("aftershock_retries_total", MODEL), "code")), "{{code}}")],
                unit=REQ_PER_SEC,
                description="Retries sent per second, by the gRPC code of the failed try.",
                stacked=True,
            )
        )
        .with_panel(
            timeseries_panel(
                "Retry ratio",
                [
                    Q(
                        promql.ratio_per_group(
                            rate("aftershock_retries_total", MODEL), backend_requests_rate
                        ),
                        "retries / requests",
                    )
                ],
                unit=RATIO,
                description="Retries as a share of backend requests. The retry budget caps this fraction, "
                "so an outage is never amplified.",
            )
        )
        .with_panel(
            timeseries_panel(
                "Retry budget exhausted",
                [
                    Q(
                        zero_if_absent(
                            sum_by(rate("aftershock_retry_budget_exhausted_total", MODEL), "model")
                        ),
                        "{{model}}",
                    )
                ],
                unit=PER_SEC,
                description="Retries not sent per second because the budget was spent: failures now reach "
                "clients directly.",
                thresholds=((0.001, "red"),),
            )
        )
        .with_panel(
            timeseries_panel(
                "Failovers by phase & outcome",
                [
                    Q(
                        zero_if_absent(sum_by(rate("aftershock_failovers_total", MODEL), "phase", "outcome")),
                        "{{phase}} {{outcome}}",
                    )
                ],
                unit=PER_SEC,
                description="Streams moved to another replica, before the first token or mid-stream "
                "(deterministic requests only), by outcome.",
            )
        )
    )


def _dependency_row(builder: dashboard_b.Dashboard) -> dashboard_b.Dashboard:
    return (
        builder.with_row(dashboard_b.Row("Replicas, Redis & dedupe"))
        .with_panel(
            state_panel(
                "Replica health",
                [
                    Q(
                        agg("min", "aftershock_replica_healthy", ("model", "replica")),
                        "{{replica}} ({{model}})",
                    )
                ],
                description="gRPC health of each inference replica as the backends see it (worst backend).",
                mappings=HEALTHY,
                base="red",
                thresholds=((1, "green"),),
            )
        )
        .with_panel(
            timeseries_panel(
                "Upstream attempts by replica & code",
                [
                    Q(
                        sum_by(rate("aftershock_upstream_requests_total"), "replica", "code"),
                        "{{replica}} {{code}}",
                    )
                ],
                unit=REQ_PER_SEC,
                description="Attempts the backends sent to each inference replica, by outcome. Traffic "
                "leaving a replica shows routing around a failure.",
                table_legend=True,
                width=12,
            )
        )
        .with_panel(
            state_panel(
                "Redis up",
                [Q(agg("min", "aftershock_redis_up", ("instance",)), "{{instance}}")],
                description="Per backend process: did its last Redis call succeed?",
                mappings=UP_DOWN,
                base="red",
                thresholds=((1, "green"),),
                width=8,
            )
        )
        .with_panel(
            state_panel(
                "Registry fallback",
                [Q(agg("max", "aftershock_registry_fallback", ("instance",)), "{{instance}}")],
                description="Per backend process: registry file, or the static fallback catalogue.",
                mappings=REGISTRY,
                thresholds=((1, "orange"),),
                width=8,
            )
        )
        .with_panel(
            timeseries_panel(
                "Dedupe outcomes",
                [
                    Q(
                        zero_if_absent(sum_by(rate("aftershock_dedupe_requests_total"), "outcome")),
                        "{{outcome}}",
                    )
                ],
                unit=REQ_PER_SEC,
                description="Keyed requests by outcome: claimed (generated here), joined (followed a live "
                "stream), replayed (served a finished result), taken_over (owner died), conflict, bypassed "
                "(Redis down: fail open).",
                stacked=True,
                width=8,
            )
        )
    )


def _shedding_and_faults_row(builder: dashboard_b.Dashboard) -> dashboard_b.Dashboard:
    return (
        builder.with_row(dashboard_b.Row("Load shedding & injected faults"))
        .with_panel(
            timeseries_panel(
                "Shed requests by hop",
                [
                    Q(
                        promql.zero_per_group(
                            rate("aftershock_shed_requests_total"), "aftershock_in_flight_requests", "service"
                        ),
                        "{{service}}",
                    )
                ],
                unit=REQ_PER_SEC,
                description="Requests refused per second because a hop reached its in-flight bound.",
                thresholds=((0.001, "red"),),
            )
        )
        .with_panel(
            state_panel(
                "Toxics per proxy",
                [Q(sum_by("aftershock_faultproxy_toxics_active", "proxy", "type"), "{{proxy}} {{type}}")],
                description="Toxics installed on each fault proxy, by type (red while installed).",
                mappings=value_map({0: ("none", "green")}),
                thresholds=((1, "red"),),
                width=6,
                no_value="no toxics",
            )
        )
        .with_panel(
            state_panel(
                "Proxy enabled",
                [Q(agg("min", "aftershock_faultproxy_proxy_enabled", ("proxy",)), "{{proxy}}")],
                description="Each fault proxy: passing traffic, or disabled (the hop is down).",
                mappings=PROXY,
                base="red",
                thresholds=((1, "green"),),
                width=6,
            )
        )
        .with_panel(
            timeseries_panel(
                "Engine-injected faults",
                [
                    Q(
                        zero_if_absent(
                            sum_by(rate("aftershock_engine_faults_injected_total", MODEL), "kind")
                        ),
                        "{{kind}}",
                    )
                ],
                unit=PER_SEC,
                description="Status-level faults the simulator engine injects (overloaded, error, "
                "slow_start), complementing the proxies' TCP-level faults.",
                bars=True,
            )
        )
    )


def build() -> dashboard.Dashboard:
    builder = base.new_dashboard(
        UID,
        TITLE,
        "Breakers, retries and retry budget, failover, dedupe, replica and Redis health, registry "
        "fallback, load shedding, and the faults injected by the fault proxies and the simulator.",
    )
    builder = _summary_row(builder)
    builder = _breaker_row(builder)
    builder = _retry_row(builder)
    builder = _dependency_row(builder)
    builder = _shedding_and_faults_row(builder)
    return base.finish(builder)
