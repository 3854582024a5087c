"""What every Aftershock dashboard shares: variables, links between dashboards, fault annotations."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.models import dashboard

from . import promql
from .panels import DATASOURCE, DATASOURCE_VAR, PROMETHEUS_TYPE

# Must match the provisioned datasource uids (provisioning/datasources/datasources.yaml).
PROMETHEUS_UID = "prometheus"
JAEGER_UID = "jaeger"

TAG = "aftershock"
FOLDER = "Aftershock"

# Which series carry the model list for the `model` variable: every hop reports it.
MODEL_SOURCE = "aftershock_requests_total"

# Fault windows, shaded on every dashboard so a latency spike lines up with the fault that caused it.
# These match only while a fault is on, so they are expected to return nothing in steady state.
FAULT_ANNOTATIONS: tuple[tuple[str, str, str], ...] = (
    (
        "Fault proxy: toxics active",
        f"{promql.sum_by('aftershock_faultproxy_toxics_active', 'proxy', 'type')} > 0",
        "orange",
    ),
    (
        "Fault proxy: proxy disabled",
        "count by (proxy) (aftershock_faultproxy_proxy_enabled == 0)",
        "red",
    ),
)


def datasource_variable() -> dashboard_b.DatasourceVariable:
    return (
        dashboard_b.DatasourceVariable(DATASOURCE_VAR)
        .label("Prometheus")
        .type(PROMETHEUS_TYPE)
        .current(dashboard.VariableOption(selected=True, text="Prometheus", value=PROMETHEUS_UID))
    )


def model_variable() -> dashboard_b.QueryVariable:
    # `.*` as the All value keeps `model=~"$model"` valid and short however many models exist.
    return (
        dashboard_b.QueryVariable("model")
        .label("Model")
        .datasource(DATASOURCE)
        .query(f"label_values({MODEL_SOURCE}, model)")
        .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dashboard.VariableOption(selected=True, text="All", value="$__all"))
    )


def new_dashboard(uid: str, title: str, description: str) -> dashboard_b.Dashboard:
    builder = (
        dashboard_b.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .timezone("browser")
        .time("now-1h", "now")
        .refresh("30s")
        # Shared crosshair: hovering one panel marks the same instant on all others.
        .tooltip(dashboard.DashboardCursorSync.CROSSHAIR)
        .link(
            dashboard_b.DashboardLink("Aftershock dashboards")
            .type(dashboard.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .with_variable(datasource_variable())
        .with_variable(model_variable())
    )
    for name, expr, color in FAULT_ANNOTATIONS:
        # The SDK's AnnotationQuery has `expr` but no step/titleFormat/tagKeys; Grafana's Prometheus
        # annotation support fills defaults (60s step, series labels as text).
        builder = builder.annotation(
            dashboard_b.AnnotationQuery()
            .name(name)
            .datasource(DATASOURCE)
            .enable(True)
            .icon_color(color)
            .expr(expr)
        )
    return builder


def finish(builder: dashboard_b.Dashboard) -> dashboard.Dashboard:
    """Build the model and number panels 1..n in layout order (the SDK leaves ids unset, and stable
    ids keep panel links such as `viewPanel=` working across re-renders)."""
    model = builder.build()
    next_id = 1
    for panel in model.panels or []:
        panel.id_val = next_id
        next_id += 1
        for child in getattr(panel, "panels", None) or []:
            child.id_val = next_id
            next_id += 1
    return model
