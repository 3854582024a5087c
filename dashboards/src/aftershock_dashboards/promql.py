"""Tiny PromQL string builders, so every dashboard writes queries the same way."""

from __future__ import annotations

from collections.abc import Sequence

# Grafana widens this to cover at least four scrapes, so rate() never sees a single sample.
RATE_WINDOW = "$__rate_interval"

# Template-variable matchers. Multi-value variables expand to a regex alternation, hence `=~`.
MODEL = 'model=~"$model"'
ENGINE_MODEL = 'model_name=~"$model"'  # vLLM names the same label `model_name`

QUANTILES: tuple[float, ...] = (0.5, 0.95, 0.99)


def selector(metric: str, *matchers: str) -> str:
    """`metric{a="b", c=~"d"}`; matchers are written out in full by the caller."""
    return f"{metric}{{{', '.join(matchers)}}}" if matchers else metric


def rate(metric: str, *matchers: str) -> str:
    return f"rate({selector(metric, *matchers)}[{RATE_WINDOW}])"


def increase(metric: str, *matchers: str) -> str:
    return f"increase({selector(metric, *matchers)}[{RATE_WINDOW}])"


def agg(op: str, expr: str, by: Sequence[str] = ()) -> str:
    """`op by (labels) (expr)`, or `op(expr)` without labels."""
    return f"{op} by ({', '.join(by)}) ({expr})" if by else f"{op}({expr})"


def sum_by(expr: str, *by: str) -> str:
    return agg("sum", expr, by)


def histogram_quantile(q: float, histogram: str, *matchers: str, by: Sequence[str] = ()) -> str:
    """Quantile of a prometheus_client histogram (`histogram` is the name without `_bucket`)."""
    buckets = sum_by(rate(f"{histogram}_bucket", *matchers), *by, "le")
    return f"histogram_quantile({q}, {buckets})"


def le_matcher(bound: float) -> str:
    """Matcher for one histogram bucket bound. prometheus_client writes whole bounds as "1.0" and
    Prometheus 3 normalises them to "1", so whole bounds match both spellings."""
    if float(bound).is_integer():
        return rf'le=~"{int(bound)}(\\.0)?"'
    return f'le="{bound}"'


def zero_if_absent(expr: str) -> str:
    """Show 0 instead of "No data" for counters that only appear once an event happened.

    `on()` matches any left-hand series, so the 0 is added only when the left side is empty.
    """
    return f"({expr}) or on() vector(0)"


def zero_per_group(expr: str, reference: str, *by: str) -> str:
    """sum(expr) per group, 0 for groups that exist in `reference` but have no `expr` series yet
    (event counters appear only after their first event; `reference` is always exported)."""
    return f"{sum_by(expr, *by)} or {sum_by(reference, *by)} * 0"


def ratio_per_group(part: str, whole: str, *by: str) -> str:
    """sum(part)/sum(whole) per group, 0 (not absent) for groups where `part` never happened."""
    return f"({zero_per_group(part, whole, *by)})\n  / {sum_by(whole, *by)}"


def quantile_label(q: float) -> str:
    return f"p{round(q * 100):d}"
