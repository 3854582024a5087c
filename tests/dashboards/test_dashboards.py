"""The Grafana dashboards: committed JSON is fresh, every query reads metrics that exist, and the
provisioning files wire the datasources the dashboards use."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
sys.path.insert(0, str(DASHBOARDS / "src"))

from aftershock_dashboards import base, queries, render  # noqa: E402

EXPECTED_UIDS = {
    "aftershock-overview",
    "aftershock-llm-serving",
    "aftershock-resilience",
    "aftershock-routing",
}
# Added by Prometheus at scrape time, so valid on every series.
TARGET_LABELS = {"job", "instance"}


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboards() -> list[dict[str, Any]]:
    return render.render_dicts()


@pytest.fixture(scope="module")
def all_queries(dashboards: list[dict[str, Any]]) -> list[queries.DashboardQuery]:
    return list(queries.iter_queries(dashboards))


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _load_build_script() -> Any:
    spec = importlib.util.spec_from_file_location("aftershock_dashboards_build", DASHBOARDS / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- rendering --------------------------------------------------------------------------------------


def test_committed_json_is_fresh() -> None:
    stale = render.stale_files()
    assert not stale, f"stale dashboard JSON {stale}: run `python dashboards/build.py` and commit"


def test_build_check_passes_on_the_committed_tree() -> None:
    assert _load_build_script().main(["--check"]) == 0


def test_stale_detection_finds_edits_missing_and_orphan_files(tmp_path: Path) -> None:
    shutil.copytree(render.JSON_DIR, tmp_path, dirs_exist_ok=True)
    assert render.stale_files(tmp_path) == []
    edited = tmp_path / "aftershock-overview.json"
    edited.write_text(edited.read_text(encoding="utf-8").replace("Overview", "Overveiw"), encoding="utf-8")
    (tmp_path / "aftershock-resilience.json").unlink()
    (tmp_path / "old-dashboard.json").write_text("{}", encoding="utf-8")
    assert render.stale_files(tmp_path) == [
        "aftershock-overview.json",
        "aftershock-resilience.json",
        "old-dashboard.json",
    ]
    render.write_all(tmp_path)
    assert render.stale_files(tmp_path) == []
    assert not (tmp_path / "old-dashboard.json").exists()


def test_json_round_trips_through_the_sdk_model(dashboards: list[dict[str, Any]]) -> None:
    # Catches keys the SDK's Dashboard schema does not know (e.g. a hand edit of the JSON).
    register_default_plugins()  # panel options and query types decode through the plugin registry
    for d in dashboards:
        back = json.loads(json.dumps(Dashboard.from_json(d), cls=JSONEncoder))
        assert back == d, f"{d['uid']}: JSON does not round-trip through grafana_foundation_sdk"


def test_uids_are_stable_and_match_file_names(dashboards: list[dict[str, Any]]) -> None:
    assert {d["uid"] for d in dashboards} == EXPECTED_UIDS
    assert {p.stem for p in render.JSON_DIR.glob("*.json")} == EXPECTED_UIDS
    for d in dashboards:
        assert base.TAG in d["tags"]


# -- panels and queries -----------------------------------------------------------------------------


def test_every_panel_queries_prometheus(dashboards: list[dict[str, Any]]) -> None:
    for d in dashboards:
        ids = [p["id"] for p in _panels(d)]
        assert len(ids) == len(set(ids)), f"{d['uid']}: duplicate panel ids"
        titles = [p["title"] for p in _panels(d) if p["type"] != "row"]
        assert len(titles) == len(set(titles)), f"{d['uid']}: duplicate panel titles"
        for panel in _panels(d):
            if panel["type"] == "row":
                continue
            where = f"{d['uid']} / {panel['title']}"
            assert panel.get("targets"), f"{where}: no targets"
            for target in panel["targets"]:
                source = target.get("datasource") or panel.get("datasource") or {}
                assert source.get("type") == "prometheus", (
                    f"{where}: target is not on a Prometheus datasource"
                )
                assert target.get("expr", "").strip(), f"{where}: empty expr"
                assert target.get("refId"), f"{where}: target without refId"
            assert panel.get("description"), f"{where}: no description"
            assert (
                panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
                or panel["type"] == "state-timeline"
            ), f"{where}: no unit"


def test_latency_panels_show_exemplars(dashboards: list[dict[str, Any]]) -> None:
    for d in dashboards:
        for panel in _panels(d):
            targets = panel.get("targets", [])
            if panel["type"] == "timeseries" and any("histogram_quantile" in t["expr"] for t in targets):
                flagged = [t for t in targets if t.get("exemplar")]
                assert len(flagged) == 1, (
                    f"{d['uid']} / {panel['title']}: want exemplars on exactly one query"
                )


def test_every_referenced_metric_exists(
    all_queries: list[queries.DashboardQuery], dashboards: list[dict[str, Any]], exposed: dict[str, set[str]]
) -> None:
    missing = {
        (q.dashboard_uid, q.panel_title, name)
        for q in all_queries
        for name in queries.metric_names(q.expr)
        if name not in exposed
    }
    for d in dashboards:
        for var in d["templating"]["list"]:
            match = re.fullmatch(r"label_values\((?:([^,]+),\s*)?(\w+)\)", str(var.get("query", "")))
            if var["type"] == "query":
                assert match, f"{d['uid']}: unexpected variable query {var['query']!r}"
                metric, label = match.groups()
                if metric not in exposed or label not in exposed[metric]:
                    missing.add((d["uid"], f"variable {var['name']}", f"{metric}/{label}"))
    assert not missing, f"queries use metrics that aftershock.metrics does not define: {sorted(missing)}"


def test_every_label_used_exists(
    all_queries: list[queries.DashboardQuery], exposed: dict[str, set[str]]
) -> None:
    problems: list[str] = []
    for q in all_queries:
        known: set[str] = set(TARGET_LABELS)
        for sel in queries.selectors(q.expr):
            labels = exposed.get(sel.metric, set()) | TARGET_LABELS
            known |= labels
            problems += [
                f"{q.dashboard_uid} / {q.panel_title}: {sel.metric} has no label {lb!r}"
                for lb in sorted(sel.labels - labels)
            ]
        problems += [
            f"{q.dashboard_uid} / {q.panel_title}: no metric in the query has label {lb!r}"
            for lb in sorted(queries.grouping_labels(q.expr) - known)
        ]
    assert not problems, "\n".join(problems)


def test_query_helper(all_queries: list[queries.DashboardQuery]) -> None:
    assert {q.dashboard_uid for q in all_queries} == EXPECTED_UIDS
    gpu = {q.panel_title for q in all_queries if q.gpu}
    assert gpu == {"GPU utilization", "GPU memory", "GPU memory used"}
    assert all(q.dashboard_uid == "aftershock-llm-serving" for q in all_queries if q.gpu)
    assert any(q.annotation for q in all_queries)
    for q in all_queries:
        assert q.expects_data == (not q.gpu and not q.annotation)
        resolved = q.resolved("2m")
        assert "$" not in resolved, f"{q.panel_title}: unresolved variable in {resolved}"
    quantile = next(q for q in all_queries if q.panel_title == "Edge: latency" and q.ref_id == "C")
    assert quantile.resolved("2m") == (
        "histogram_quantile(0.99, sum by (service, le) (rate(aftershock_request_duration_seconds_bucket"
        '{service="edge", model=~".*"}[2m])))'
    )


@pytest.mark.parametrize(
    ("expr", "metrics", "grouping"),
    [
        ('sum by (le) (rate(a_bucket{x="1", y=~"$v"}[$__rate_interval]))', {"a_bucket": {"x", "y"}}, {"le"}),
        (
            "sum(rate(vllm:prompt_tokens_total[5m])) by (model_name) > 0.5e3",
            {"vllm:prompt_tokens_total": set()},
            {"model_name"},
        ),
        ('a / ignoring (code) group_left b{c!="}"} or on() vector(0)', {"a": set(), "b": {"c"}}, {"code"}),
        ('{__name__="m", job="j"} offset 1h30m', {"m": {"job"}}, set()),
        ("histogram_quantile(0.9, x) and bool_metric", {"x": set(), "bool_metric": set()}, set()),
    ],
)
def test_promql_lexer(expr: str, metrics: dict[str, set[str]], grouping: set[str]) -> None:
    found: dict[str, set[str]] = {}
    for sel in queries.selectors(expr):
        found.setdefault(sel.metric, set()).update(sel.labels)
    assert found == metrics
    assert queries.grouping_labels(expr) == grouping


# -- provisioning -----------------------------------------------------------------------------------


def test_datasource_provisioning(dashboards: list[dict[str, Any]]) -> None:
    config = _load_yaml(DASHBOARDS / "provisioning" / "datasources" / "datasources.yaml")
    assert config["apiVersion"] == 1
    by_uid = {ds["uid"]: ds for ds in config["datasources"]}
    assert by_uid[base.PROMETHEUS_UID]["type"] == "prometheus"
    assert by_uid[base.JAEGER_UID]["type"] == "jaeger"
    destinations = by_uid[base.PROMETHEUS_UID]["jsonData"]["exemplarTraceIdDestinations"]
    assert {(d["name"], d["datasourceUid"]) for d in destinations} == {("trace_id", base.JAEGER_UID)}
    for d in dashboards:
        source_var = next(v for v in d["templating"]["list"] if v["type"] == "datasource")
        assert source_var["query"] == "prometheus"
        assert source_var["current"]["value"] in by_uid, f"{d['uid']}: default datasource is not provisioned"
        used = {json.dumps(p["datasource"], sort_keys=True) for p in _panels(d) if "datasource" in p}
        used |= {json.dumps(a["datasource"], sort_keys=True) for a in d["annotations"]["list"]}
        for ref in map(json.loads, used):
            assert ref["uid"] == f"${{{source_var['name']}}}" or ref["uid"] in by_uid, f"{d['uid']}: {ref}"


def test_provisioning_env_vars_have_compose_defaults() -> None:
    defaults = dict(
        line.split("=", 1)
        for line in (DASHBOARDS / "grafana.env").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    )
    referenced: set[str] = set()
    for path in (DASHBOARDS / "provisioning").rglob("*.yaml"):
        # Grafana expands $VAR / ${VAR} in values (comments are not values).
        for value in _strings(_load_yaml(path)):
            referenced |= set(re.findall(r"\$\{?(\w+)\}?", value))
    assert referenced, "datasource URLs should come from the environment"
    assert referenced <= defaults.keys(), (
        f"no default in grafana.env for {sorted(referenced - defaults.keys())}"
    )
    assert defaults["AFTERSHOCK_PROMETHEUS_URL"] == "http://prometheus:9090"
    assert defaults["AFTERSHOCK_JAEGER_URL"] == "http://jaeger:16686"


def test_dashboard_provider() -> None:
    config = _load_yaml(DASHBOARDS / "provisioning" / "dashboards" / "dashboards.yaml")
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == base.FOLDER
    assert provider["options"]["path"]
