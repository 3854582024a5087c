"""Overview: the golden signals (traffic, errors, latency, saturation) at every hop.

Read top to bottom: the client's view at the edge, then the three hops side by side to see where
errors or latency enter, then one row per hop with the detail.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.models import dashboard

from . import base, promql
from .panels import (
    CORES,
    COUNT,
    RATIO,
    REQ_PER_SEC,
    SECONDS,
    Q,
    quantile_panel,
    right_axis,
    stat_panel,
    timeseries_panel,
)
from .promql import MODEL, rate, sum_by, zero_if_absent

UID = "aftershock-overview"
TITLE = "Aftershock / Overview"

HOPS = ("edge", "backend", "inference")

REQUESTS = "aftershock_requests_total"
DURATION = "aftershock_request_duration_seconds"
IN_FLIGHT = "aftershock_in_flight_requests"
SHED = "aftershock_shed_requests_total"
HTTP = "aftershock_http_responses_total"

NOT_OK = 'code!="OK"'
# Process-level series (CPU, GC) carry no `service` label; the scrape job's name holds the hop's.
HOP_JOB = 'job=~".*(edge|backend|inference).*"'
PROCESS_CPU = "process_cpu_seconds_total"
GC_CPU = "aftershock_gc_cpu_seconds_total"
# Error-ratio guide lines: 1% is worth a look, 5% is an incident.
ERROR_STEPS = ((0.01, "orange"), (0.05, "red"))


def _service(hop: str) -> str:
    return f'service="{hop}"'


def _summary_row(builder: dashboard_b.Dashboard) -> dashboard_b.Dashboard:
    edge = _service("edge")
    http_5xx = promql.ratio_per_group(rate(HTTP, 'status=~"5.."'), rate(HTTP))
    return (
        builder.with_row(dashboard_b.Row("Client view (edge)"))
        .with_panel(
            stat_panel(
                "Edge request rate",
                Q(sum_by(rate(REQUESTS, edge, MODEL))),
                unit=REQ_PER_SEC,
                description="Requests finished at the edge per second, all codes.",
                base="blue",
            )
        )
        .with_panel(
            stat_panel(
                "Edge 5xx ratio",
                Q(http_5xx),
                unit=RATIO,
                description="Share of HTTP responses with a 5xx status (500 internal, 503 breaker open or "
                "no healthy replica, 504 deadline). All models: the HTTP counter has no model label.",
                thresholds=ERROR_STEPS,
                decimals=2,
            )
        )
        .with_panel(
            stat_panel(
                "Edge p99 latency",
                Q(promql.histogram_quantile(0.99, DURATION, edge, MODEL)),
                unit=SECONDS,
                description="p99 from arrival at the edge to the last byte of the answer. Streams included, "
                "so it grows with completion length: TTFT is the SLO signal, this one is for context.",
                base="blue",
            )
        )
        .with_panel(
            stat_panel(
                "Edge p95 TTFT",
                Q(promql.histogram_quantile(0.95, "aftershock_time_to_first_token_seconds", MODEL)),
                unit=SECONDS,
                description="Client-perceived time to first token, p95. 0.5 s and 1 s are the SLO "
                "thresholds.",
                thresholds=((0.5, "orange"), (1.0, "red")),
            )
        )
        .with_panel(
            stat_panel(
                "In flight (all hops)",
                Q(sum_by(IN_FLIGHT)),
                unit=COUNT,
                description="Requests being served now, summed over every process of every hop.",
                base="blue",
            )
        )
        .with_panel(
            stat_panel(
                "Shed (all hops)",
                Q(zero_if_absent(sum_by(rate(SHED)))),
                unit=REQ_PER_SEC,
                description="Requests refused per second because a hop hit its in-flight bound "
                "(RESOURCE_EXHAUSTED + Retry-After). Anything above 0 means a hop is at capacity.",
                thresholds=((0.001, "red"),),
            )
        )
    )


def _hops_row(builder: dashboard_b.Dashboard) -> dashboard_b.Dashboard:
    return (
        builder.with_row(dashboard_b.Row("Hops compared"))
        .with_panel(
            timeseries_panel(
                "Request rate by hop",
                [Q(sum_by(rate(REQUESTS, MODEL), "service"), "{{service}}")],
                unit=REQ_PER_SEC,
                description="Requests finished per second at each hop. Inference above backend means "
                "retries or failovers: each attempt is one inference request.",
                width=8,
            )
        )
        .with_panel(
            timeseries_panel(
                "Error ratio by hop",
                [
                    Q(
                        promql.ratio_per_group(
                            rate(REQUESTS, MODEL, NOT_OK), rate(REQUESTS, MODEL), "service"
                        ),
                        "{{service}}",
                    )
                ],
                unit=RATIO,
                description="Share of requests that ended with a non-OK gRPC code at each hop (CANCELLED "
                "included: clients giving up is a symptom). The lowest hop with errors is the origin.",
                thresholds=ERROR_STEPS,
                width=8,
            )
        )
        .with_panel(
            timeseries_panel(
                "p99 latency by hop",
                [
                    Q(
                        promql.histogram_quantile(0.99, DURATION, MODEL, by=("service",)),
                        "{{service}}",
                        exemplar=True,
                    )
                ],
                unit=SECONDS,
                description="p99 duration at each hop; the gap between two hops is time spent between them. "
                "Dots are exemplars: click one to open its trace in Jaeger.",
                width=8,
            )
        )
    )


def _cpu_panels(builder: dashboard_b.Dashboard) -> dashboard_b.Dashboard:
    """What each hop costs in CPU, the garbage collector's part, and per request: the live
    counterpart of benchmarks/overhead.py's figures."""
    cpu = sum_by(rate(PROCESS_CPU, HOP_JOB), "job")
    return builder.with_panel(
        timeseries_panel(
            "CPU by hop, garbage collection beside it",
            [
                Q(cpu, "{{job}}"),
                Q(sum_by(rate(GC_CPU, HOP_JOB), "job"), "{{job}} GC"),
            ],
            unit=CORES,
            description="CPU seconds per second of each service's processes (all threads), and the "
            "part spent in Python's garbage collector (well under 1 % of it under steady load). A GC line "
            "that climbs towards its process's means full collections are back: "
            "aftershock_gc_collections_total by generation shows which.",
            width=12,
        )
    ).with_panel(
        timeseries_panel(
            "CPU per request by hop",
            [Q(f"{cpu}\n  /\n{sum_by(rate(REQUESTS, HOP_JOB), 'job')}", "{{job}}")],
            unit=SECONDS,
            description="CPU seconds per finished request at each hop, all models together (CPU "
            "cannot be split by model). A streamed request costs more than a non-streamed one, so "
            "a shift in the mix moves this line as much as a slower process does.",
            width=12,
        )
    )


def _hop_row(builder: dashboard_b.Dashboard, hop: str) -> dashboard_b.Dashboard:
    svc = _service(hop)
    name = hop.capitalize()
    error_by_code = (
        f"{sum_by(rate(REQUESTS, svc, MODEL, NOT_OK), 'code')}\n"
        f"  / ignoring (code) group_left\n"
        f"{sum_by(rate(REQUESTS, svc, MODEL))}"
    )
    saturation = timeseries_panel(
        f"{name}: in flight & shed",
        [
            Q(sum_by(promql.selector(IN_FLIGHT, svc), "instance"), "in flight {{instance}}"),
            Q(zero_if_absent(sum_by(rate(SHED, svc))), "shed/s"),
        ],
        unit=COUNT,
        description=f"Requests in flight per {hop} process (left) and requests shed per second "
        "(right, bars). Shedding starts when a process reaches its in-flight bound.",
    )
    return (
        builder.with_row(dashboard_b.Row(f"Hop: {name}"))
        .with_panel(
            timeseries_panel(
                f"{name}: requests by code",
                [Q(sum_by(rate(REQUESTS, svc, MODEL), "code"), "{{code}}")],
                unit=REQ_PER_SEC,
                description=f"Requests finished at the {hop} per second, by gRPC status code name.",
                stacked=True,
            )
        )
        .with_panel(
            timeseries_panel(
                f"{name}: error ratio by code",
                [Q(zero_if_absent(error_by_code), "{{code}}")],
                unit=RATIO,
                description=f"Share of {hop} requests ending with each non-OK code. UNAVAILABLE: "
                "breaker open or no healthy replica; RESOURCE_EXHAUSTED: shed or rate limited; "
                "DEADLINE_EXCEEDED: ran out of time; CANCELLED: the client went away.",
                thresholds=ERROR_STEPS,
                stacked=True,
            )
        )
        .with_panel(
            quantile_panel(
                f"{name}: latency",
                DURATION,
                svc,
                MODEL,
                by=("service",),
                description=f"p50/p95/p99 from arrival at the {hop} to the last byte of its answer.",
            )
        )
        .with_panel(right_axis(saturation, "B", REQ_PER_SEC))
    )


def build() -> dashboard.Dashboard:
    builder = base.new_dashboard(
        UID,
        TITLE,
        "Golden signals per hop (edge -> backend -> inference): traffic, errors by code, latency "
        "percentiles with trace exemplars, in-flight work and load shedding.",
    )
    builder = _summary_row(builder)
    builder = _cpu_panels(_hops_row(builder))
    for hop in HOPS:
        builder = _hop_row(builder, hop)
    return base.finish(builder)
