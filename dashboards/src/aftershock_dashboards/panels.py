"""Shared panel builders: one place decides datasource, legends, tooltips, units and thresholds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.models import common, dashboard
from grafana_foundation_sdk.models.prometheus import QueryEditorMode

from . import promql

# Every query goes through the dashboard's datasource variable (see variables.datasource_variable),
# which defaults to the provisioned Prometheus datasource uid.
PROMETHEUS_TYPE = "prometheus"
DATASOURCE_VAR = "datasource"
DATASOURCE = dashboard.DataSourceRef(type_val=PROMETHEUS_TYPE, uid=f"${{{DATASOURCE_VAR}}}")

# Units from Grafana's unit registry; "suffix:" is Grafana's custom-unit syntax.
SECONDS = "s"
REQ_PER_SEC = "reqps"
RATIO = "percentunit"
BYTES = "bytes"
COUNT = "short"
TOKENS_PER_SEC = "suffix:tok/s"
PER_SEC = "suffix:/s"
CORES = "suffix: cores"  # CPU seconds per second

Steps = Sequence[tuple[float, str]]


@dataclass(frozen=True)
class Q:
    """One PromQL query of a panel: expression, legend, and whether to fetch exemplars."""

    expr: str
    legend: str = ""
    exemplar: bool = False


def _ref_id(index: int) -> str:
    return chr(ord("A") + index)


def _target(query: Q, index: int, *, instant: bool = False) -> prometheus.Dataquery:
    target = (
        prometheus.Dataquery()
        .datasource(DATASOURCE)
        .ref_id(_ref_id(index))
        .expr(query.expr)
        .editor_mode(QueryEditorMode.CODE)  # the builder editor would rewrite hand-tuned PromQL
        .legend_format(query.legend or "__auto")
    )
    if instant:
        target = target.instant()
    else:
        target = target.range()
    if query.exemplar:
        target = target.exemplar(True)
    return target


def _thresholds(steps: Steps, base: str = "green") -> dashboard_b.ThresholdsConfig:
    """Base colour below the first step; each (value, colour) applies from value upwards."""
    return (
        dashboard_b.ThresholdsConfig()
        .mode(dashboard.ThresholdsMode.ABSOLUTE)
        .steps(
            [dashboard.Threshold(value=None, color=base)]
            + [dashboard.Threshold(value=v, color=c) for v, c in steps]
        )
    )


def value_map(mapping: dict[int, tuple[str, str]]) -> list[dashboard.ValueMapping]:
    """Numeric state -> (text, colour), e.g. breaker 0/1/2 -> closed/open/half-open."""
    options = {
        str(value): dashboard.ValueMappingResult(text=text, color=color, index=i)
        for i, (value, (text, color)) in enumerate(sorted(mapping.items()))
    }
    return [dashboard.ValueMap(options=options)]


def _legend(table: bool) -> common_b.VizLegendOptions:
    legend = common_b.VizLegendOptions().show_legend(True)
    if table:
        # Wide panels: a table legend with the numbers an on-call engineer compares first.
        return (
            legend.display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.RIGHT)
            .calcs(["mean", "max", "lastNotNull"])
        )
    return legend.display_mode(common.LegendDisplayMode.LIST).placement(common.LegendPlacement.BOTTOM)


def timeseries_panel(
    title: str,
    queries: Sequence[Q],
    *,
    unit: str,
    description: str,
    width: int = 6,
    height: int = 8,
    min_val: float | None = 0,
    max_val: float | None = None,
    thresholds: Steps = (),
    stacked: bool = False,
    bars: bool = False,
    table_legend: bool = False,
    no_value: str | None = None,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets([_target(q, i) for i, q in enumerate(queries)])
        .unit(unit)
        .span(width)
        .height(height)
        .legend(_legend(table_legend))
        .tooltip(
            common_b.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
        .line_width(1)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
    )
    if min_val is not None:
        panel = panel.min(min_val)
    if max_val is not None:
        panel = panel.max(max_val)
    if thresholds:
        # Drawn as dashed lines (SLO targets, saturation limits); series keep palette colours.
        panel = panel.thresholds(_thresholds(thresholds)).thresholds_style(
            common_b.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
        )
    if stacked:
        panel = panel.stacking(common_b.StackingConfig().mode(common.StackingMode.NORMAL)).fill_opacity(40)
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(60)
    if no_value is not None:
        panel = panel.no_value(no_value)
    return panel


def right_axis(panel: timeseries.Panel, ref_id: str, unit: str) -> timeseries.Panel:
    """Move one query's series to a right-hand axis with its own unit (in-flight vs shed/s)."""
    return panel.override_by_query(
        ref_id,
        [
            dashboard.DynamicConfigValue(id_val="custom.axisPlacement", value=common.AxisPlacement.RIGHT),
            dashboard.DynamicConfigValue(id_val="unit", value=unit),
            dashboard.DynamicConfigValue(id_val="custom.drawStyle", value=common.GraphDrawStyle.BARS),
            dashboard.DynamicConfigValue(id_val="custom.fillOpacity", value=60),
        ],
    )


def quantile_panel(
    title: str,
    histogram: str,
    *matchers: str,
    description: str,
    by: Sequence[str] = (),
    legend_prefix: str = "",
    width: int = 6,
    height: int = 8,
    thresholds: Steps = (),
) -> timeseries.Panel:
    """p50/p95/p99 of a histogram. Exemplars (trace ids) are fetched once, on the p99 query:
    every quantile reads the same buckets, so asking on each would draw each exemplar three times."""
    highest = max(promql.QUANTILES)
    queries = [
        Q(
            promql.histogram_quantile(q, histogram, *matchers, by=by),
            f"{legend_prefix}{promql.quantile_label(q)}",
            exemplar=q == highest,
        )
        for q in promql.QUANTILES
    ]
    return timeseries_panel(
        title,
        queries,
        unit=SECONDS,
        description=description + " Dots are exemplars: click one to open its trace in Jaeger.",
        width=width,
        height=height,
        thresholds=thresholds,
    )


def stat_panel(
    title: str,
    query: Q,
    *,
    unit: str,
    description: str,
    thresholds: Steps = (),
    base: str = "green",
    mappings: list[dashboard.ValueMapping] | None = None,
    width: int = 4,
    height: int = 4,
    decimals: int | None = None,
    no_value: str | None = None,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets([_target(query, 0)])
        .unit(unit)
        .span(width)
        .height(height)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .text_mode(common.BigValueTextMode.VALUE)
        .thresholds(_thresholds(thresholds, base))
        .color_scheme(dashboard_b.FieldColor().mode(dashboard.FieldColorModeId.THRESHOLDS))
    )
    if mappings is not None:
        panel = panel.mappings(mappings)
    if decimals is not None:
        panel = panel.decimals(decimals)
    if no_value is not None:
        panel = panel.no_value(no_value)
    return panel


def state_panel(
    title: str,
    queries: Sequence[Q],
    *,
    description: str,
    mappings: list[dashboard.ValueMapping] | None = None,
    thresholds: Steps = (),
    base: str = "green",
    width: int = 12,
    height: int = 8,
    no_value: str | None = None,
) -> statetimeline.Panel:
    """A state timeline: one lane per series, coloured by value mapping (or thresholds)."""
    panel = (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets([_target(q, i) for i, q in enumerate(queries)])
        .span(width)
        .height(height)
        .show_value(common.VisibilityMode.AUTO)
        .merge_values(True)
        .row_height(0.9)
        .fill_opacity(70)
        .line_width(0)
        .legend(common_b.VizLegendOptions().show_legend(False))
        .tooltip(
            common_b.VizTooltipOptions().mode(common.TooltipDisplayMode.SINGLE).sort(common.SortOrder.NONE)
        )
        .thresholds(_thresholds(thresholds, base))
        .color_scheme(dashboard_b.FieldColor().mode(dashboard.FieldColorModeId.THRESHOLDS))
    )
    if mappings is not None:
        panel = panel.mappings(mappings)
    if no_value is not None:
        panel = panel.no_value(no_value)
    return panel
