"""Every PromQL query in the dashboards, for tests that check them against metrics.py or run them
against a real Prometheus.

    import sys; sys.path.insert(0, "dashboards/src")
    from aftershock_dashboards.queries import iter_queries
    for q in iter_queries():
        prom.query(q.resolved())            # template variables substituted
        if q.expects_data: ...               # not a GPU panel, not a fault-window annotation

It also holds a small PromQL lexer (`selectors`, `grouping_labels`): enough to list the metric
names and label names a query uses, not a validating parser (Prometheus is the judge of syntax).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

GPU_PREFIX = "aftershock_gpu_"

# Grafana's interval macros all become one fixed window outside Grafana.
_INTERVAL_MACROS = ("__rate_interval", "__interval", "__range")


@dataclass(frozen=True)
class DashboardQuery:
    dashboard_uid: str
    panel_title: str  # for annotations: "annotation: <name>"
    ref_id: str
    expr: str  # as stored in the dashboard, with Grafana template variables
    gpu: bool  # reads aftershock_gpu_*: absent (not 0) on hosts without a GPU
    annotation: bool  # a fault-window annotation: matches only while a fault is injected
    variables: tuple[tuple[str, str], ...] = ()  # dashboard variable -> value that selects everything

    @property
    def expects_data(self) -> bool:
        """Should this query return series on a running stack with traffic?"""
        return not (self.gpu or self.annotation)

    def resolved(self, rate_interval: str = "1m") -> str:
        """The expression with template variables substituted (`$model` -> `.*` and so on)."""
        values = dict(self.variables)
        values.update(dict.fromkeys(_INTERVAL_MACROS, rate_interval))

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            if name not in values:
                raise KeyError(f"{self.dashboard_uid} / {self.panel_title}: unknown variable ${name}")
            return values[name]

        return _VARIABLE.sub(substitute, self.expr)


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def _all_values(dashboard: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Value of each non-datasource variable that selects everything (its All value)."""
    out: list[tuple[str, str]] = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "datasource":
            continue
        if var.get("includeAll"):
            out.append((var["name"], var.get("allValue") or ".*"))
        else:
            current = var.get("current", {}).get("value", "")
            out.append((var["name"], current if isinstance(current, str) else "|".join(current)))
    return tuple(out)


def _panels(panels: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows nest their panels


def iter_queries(dashboards: Iterable[Mapping[str, Any]] | None = None) -> Iterator[DashboardQuery]:
    """Yield every PromQL expression of every panel target and annotation.

    `dashboards` are dashboard JSON objects; by default a fresh render of all Aftershock dashboards
    (identical to the committed JSON while tests/dashboards passes).
    """
    if dashboards is None:
        from .render import render_dicts  # lazy: keeps this module importable without the SDK

        dashboards = render_dicts()
    for dash in dashboards:
        uid = dash["uid"]
        variables = _all_values(dash)
        for panel in _panels(dash.get("panels", [])):
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if expr:
                    yield DashboardQuery(
                        uid,
                        panel.get("title", ""),
                        target.get("refId", ""),
                        expr,
                        uses_gpu(expr),
                        False,
                        variables,
                    )
        for annotation in dash.get("annotations", {}).get("list", []):
            expr = annotation.get("expr")
            if expr:
                yield DashboardQuery(
                    uid,
                    f"annotation: {annotation.get('name', '')}",
                    "",
                    expr,
                    uses_gpu(expr),
                    True,
                    variables,
                )


# -- PromQL lexing --------------------------------------------------------------------------------

_STR = r""""(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`"""
_TOKEN = re.compile(
    rf"""
    (?P<ws>\s+)
    |(?P<string>{_STR})
    |(?P<var>\$\{{[^}}]*\}}|\$\w+)
    |(?P<range>\[[^\]]*\])
    |(?P<braces>\{{(?:{_STR}|[^}}"'`])*\}})
    |(?P<number>(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)(?:[a-zA-Z]+\d*)*)
    |(?P<ident>[A-Za-z_:][\w:]*)
    |(?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_MATCHER = re.compile(rf"""([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*({_STR})""")
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = _GROUPING | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}


@dataclass(frozen=True)
class Selector:
    metric: str
    labels: frozenset[str]  # label names used in the selector's matchers


def _tokens(expr: str) -> list[tuple[str, str]]:
    return [(m.lastgroup or "", m.group()) for m in _TOKEN.finditer(expr) if m.lastgroup != "ws"]


def _matchers(braces: str) -> dict[str, tuple[str, str]]:
    return {m.group(1): (m.group(2), m.group(3)[1:-1]) for m in _MATCHER.finditer(braces)}


def selectors(expr: str) -> list[Selector]:
    """Every series selector in `expr`, with its metric name and the label names it matches on."""
    tokens = _tokens(expr)
    found: list[Selector] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "ident" and text.lower() in _GROUPING:
            i += _skip_group(tokens, i + 1)  # label list, not a selector
        elif kind == "ident" and text.lower() not in _KEYWORDS and not _is_call(nxt):
            labels = _matchers(nxt[1]) if nxt[0] == "braces" else {}
            found.append(Selector(text, frozenset(labels)))
            i += 1 if nxt[0] == "braces" else 0
        elif kind == "braces":  # `{__name__="x", ...}` with no leading name
            labels = _matchers(text)
            op, name = labels.get("__name__", ("", ""))
            if op == "=":
                found.append(Selector(name, frozenset(labels) - {"__name__"}))
        i += 1
    return found


def _is_call(nxt: tuple[str, str]) -> bool:
    """A function or aggregation (`rate(`, `sum by (`), not a metric name."""
    return nxt[1] == "(" or (nxt[0] == "ident" and nxt[1].lower() in ("by", "without"))


def grouping_labels(expr: str) -> set[str]:
    """Label names in by/without/on/ignoring/group_left/group_right clauses."""
    tokens = _tokens(expr)
    labels: set[str] = set()
    for i, (kind, text) in enumerate(tokens):
        if kind == "ident" and text.lower() in _GROUPING:
            end = i + 1 + _skip_group(tokens, i + 1)
            labels.update(t for k, t in tokens[i + 1 : end] if k == "ident")
    return labels


def _skip_group(tokens: list[tuple[str, str]], start: int) -> int:
    """Length of a parenthesised label list starting at `start` (0 when there is none)."""
    if start >= len(tokens) or tokens[start][1] != "(":
        return 0
    for j in range(start, len(tokens)):
        if tokens[j][1] == ")":
            return j - start + 1
    return len(tokens) - start


def metric_names(expr: str) -> set[str]:
    return {s.metric for s in selectors(expr)}


def uses_gpu(expr: str) -> bool:
    return any(name.startswith(GPU_PREFIX) for name in metric_names(expr))
