"""Routing: where requests go and why. Prefix and session affinity against load, prefix-cache hit
rate per replica (what affinity buys), engine queues per replica (what load-aware placement reads),
fallbacks, and hedged first tokens.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.models import dashboard

from . import base, promql
from .panels import PER_SEC, RATIO, REQ_PER_SEC, Q, stat_panel, timeseries_panel
from .promql import ENGINE_MODEL, MODEL, rate, sum_by, zero_if_absent

UID = "aftershock-routing"
TITLE = "Aftershock / Routing"

DECISIONS = "aftershock_routing_decisions_total"
HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"


def _placement_row(builder: dashboard_b.Dashboard) -> dashboard_b.Dashboard:
    affinity = sum_by(rate(DECISIONS, MODEL, 'reason=~"prefix|session"'))
    return (
        builder.with_row(dashboard_b.Row("Placement"))
        .with_panel(
            stat_panel(
                "Affinity share",
                Q(zero_if_absent(f"{affinity} / {sum_by(rate(DECISIONS, MODEL))}")),
                unit=RATIO,
                description="Requests placed on their prefix's or session's home replica. Low while "
                "traffic has long shared prompts means homes are over the load bound (spill).",
            )
        )
        .with_panel(
            timeseries_panel(
                "Routing decisions by reason",
                [Q(sum_by(rate(DECISIONS, MODEL), "reason"), "{{reason}}")],
                unit=REQ_PER_SEC,
                description="prefix/session: the key's home replica; spill: the home was above the load "
                "bound; least_loaded: no affinity key (short prompt); fallback_tier / fallback_model: the "
                "primary pool or the model could not serve.",
                stacked=True,
                width=10,
            )
        )
        .with_panel(
            timeseries_panel(
                "Prefix cache hit rate per replica",
                [
                    Q(
                        f"{sum_by(rate(HITS, ENGINE_MODEL), 'instance')}\n  / "
                        f"{sum_by(rate(QUERIES, ENGINE_MODEL), 'instance')}",
                        "{{instance}}",
                    )
                ],
                unit=RATIO,
                description="Prompt tokens found in the engine's prefix cache over prompt tokens looked "
                "up (vLLM's own counters). Prefix affinity exists to raise this.",
                max_val=1,
                width=10,
            )
        )
    )


def _load_row(builder: dashboard_b.Dashboard) -> dashboard_b.Dashboard:
    return (
        builder.with_row(dashboard_b.Row("Load & hedging"))
        .with_panel(
            timeseries_panel(
                "Engine queue per replica",
                [
                    Q(
                        sum_by(promql.selector("vllm:num_requests_waiting", ENGINE_MODEL), "instance"),
                        "{{instance}} waiting",
                    ),
                    Q(
                        sum_by(promql.selector("vllm:num_requests_running", ENGINE_MODEL), "instance"),
                        "{{instance}} running",
                    ),
                ],
                unit="short",
                description="What the backend's placement reads from each engine (polled): queued "
                "requests weigh on time to first token, so a long queue steers new work away.",
                width=8,
            )
        )
        .with_panel(
            timeseries_panel(
                "Hedged first tokens",
                [Q(zero_if_absent(sum_by(rate("aftershock_hedges_total", MODEL), "outcome")), "{{outcome}}")],
                unit=PER_SEC,
                description="started: a second try raced a late first token; won: the hedge answered "
                "first; cancelled: the losing try was cancelled (its engine aborts); refused: the retry "
                "budget, which hedges share with retries, said no.",
                width=8,
            )
        )
        .with_panel(
            timeseries_panel(
                "Fallbacks",
                [
                    Q(
                        zero_if_absent(
                            sum_by(rate(DECISIONS, MODEL, 'reason=~"fallback_.*"'), "model", "reason")
                        ),
                        "{{model}} {{reason}}",
                    )
                ],
                unit=REQ_PER_SEC,
                description="Requests served by a model's fallback tier or by another model of its "
                "fallback chain: the primary could not serve, or the prompt exceeded its context.",
                width=8,
            )
        )
    )


def build() -> dashboard.Dashboard:
    builder = base.new_dashboard(
        UID,
        TITLE,
        "Where requests go and why: prefix and session affinity bounded by engine load, prefix-cache "
        "hit rate per replica, engine queues, fallbacks and hedged first tokens.",
    )
    builder = _placement_row(builder)
    builder = _load_row(builder)
    return base.finish(builder)
