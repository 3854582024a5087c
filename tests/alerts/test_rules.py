"""The Prometheus rules in alerts/: promtool accepts them and their unit tests pass, every alert is
labelled, annotated, documented by a runbook and tested both firing and quiet, and every query reads
metrics and labels that aftershock.metrics defines."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _load_by_path(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rules = _load_by_path("aftershock_alert_rules", HERE / "alert_rules.py")
# One PromQL lexer for the project: the dashboards' (a lexer, not a parser; promtool judges syntax).
sys.path.insert(0, str(ROOT / "dashboards" / "src"))
from aftershock_dashboards.queries import grouping_labels, selectors  # type: ignore[import-not-found]  # noqa: E402

RULE_FILES = rules.rule_files()
UNIT_TEST_FILES = rules.unit_test_files()
# Added by Prometheus at scrape time, so valid on every scraped series.
TARGET_LABELS = {"job", "instance"}
# Series Prometheus makes itself: `up` per scrape target.
SYNTHETIC = {"up": TARGET_LABELS}
RUNBOOK_SECTIONS = ("## Meaning", "## Impact", "## First checks", "## Mitigation", "## Escalation")
PROMTOOL_MISSING = (
    "promtool is not on PATH. It ships with Debian's `prometheus` package (apt-get install prometheus), "
    "which the project's test setup installs; rules must stay valid for Prometheus 2.42."
)


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(result.args)}\n{result.stdout}{result.stderr}"


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(PROMTOOL_MISSING, pytrace=False)
    return path


@pytest.fixture(scope="session")
def unit_test_runs(promtool: str) -> Iterator[dict[Path, Future[subprocess.CompletedProcess[str]]]]:
    """`promtool test rules` on every test file, all started at once (each replays hours of samples)."""
    with ThreadPoolExecutor(max_workers=max(len(UNIT_TEST_FILES), 1)) as pool:
        yield {path: pool.submit(_run, [promtool, "test", "rules", str(path)]) for path in UNIT_TEST_FILES}


@pytest.fixture(scope="module")
def known_series(exposed: dict[str, set[str]]) -> dict[str, set[str]]:
    """Everything a query may select: exported samples, Prometheus' own series, recorded series."""
    known = {name: labels | TARGET_LABELS for name, labels in exposed.items()}
    known.update(SYNTHETIC)
    # A recorded series has its rule's labels plus those of the recorded series it reads (the rules
    # here aggregate raw metrics away with sum(), so their labels do not carry over).
    records = [r for r in rules.iter_rules() if r.kind == "record"]
    recorded: dict[str, set[str]] = {}
    for _ in range(3):  # rules that read rules that read rules
        for rule in records:
            labels = set(rule.labels)
            for sel in selectors(rule.expr):
                labels |= recorded.get(sel.metric, set())
            recorded.setdefault(rule.name, set()).update(labels)
    known.update(recorded)
    return known


def _unit_tests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in UNIT_TEST_FILES:
        for group in rules.load_yaml(path).get("tests") or []:
            yield path, group


# -- promtool ---------------------------------------------------------------------------------------


def test_alerts_dir_has_rules_and_unit_tests() -> None:
    assert RULE_FILES, f"no *.rules.yml in {rules.ALERTS_DIR}"
    assert UNIT_TEST_FILES, f"no promtool unit tests in {rules.UNIT_TESTS_DIR}"


@pytest.mark.parametrize("path", RULE_FILES, ids=_ids(RULE_FILES))
def test_promtool_check_rules(promtool: str, path: Path) -> None:
    result = _run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, _output(result)


@pytest.mark.parametrize("path", UNIT_TEST_FILES, ids=_ids(UNIT_TEST_FILES))
def test_promtool_unit_tests(
    unit_test_runs: dict[Path, Future[subprocess.CompletedProcess[str]]], path: Path
) -> None:
    result = unit_test_runs[path].result()
    assert result.returncode == 0, _output(result)


def test_every_rule_file_is_unit_tested() -> None:
    loaded: set[Path] = set()
    for path in UNIT_TEST_FILES:
        for entry in rules.load_yaml(path)["rule_files"]:
            matches = sorted(path.parent.glob(entry))
            assert matches, f"{path.name}: rule_files entry {entry!r} matches nothing"
            loaded.update(m.resolve() for m in matches)
    assert not set(RULE_FILES) - loaded, f"rule files no unit test loads: {sorted(set(RULE_FILES) - loaded)}"


def test_template_and_runbook_queries_parse(promtool: str, tmp_path: Path) -> None:
    """promtool checks rule expressions; the queries in templates and runbooks get checked as rules."""
    extra = [e for e in rules.iter_exprs() if e.kind in ("template", "runbook")]
    assert any(e.kind == "template" for e in extra) and any(e.kind == "runbook" for e in extra)
    group = {
        "name": "queries",
        "rules": [{"record": f"check:query:{i}", "expr": e.expr} for i, e in enumerate(extra)],
    }
    path = tmp_path / "queries.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}), encoding="utf-8")
    result = _run([promtool, "check", "rules", str(path)])
    listing = "\n".join(f"check:query:{i} <- {e.source} ({e.name}): {e.expr}" for i, e in enumerate(extra))
    assert result.returncode == 0, f"{_output(result)}\n{listing}"


# -- alert metadata and runbooks --------------------------------------------------------------------


def test_every_alert_is_labelled_annotated_and_has_a_runbook() -> None:
    alerts = rules.alerts()
    assert alerts
    names = [a.name for a in alerts]
    assert len(names) == len(set(names)), "alert names must be unique"
    problems: list[str] = []
    for a in alerts:
        where = f"{a.file.name}: {a.name}"
        if not a.name.startswith("Aftershock"):
            problems.append(f"{where}: name should start with Aftershock")
        if a.labels.get("severity") not in rules.SEVERITIES:
            severity = a.labels.get("severity")
            problems.append(f"{where}: severity {severity!r} is not one of {rules.SEVERITIES}")
        for key in ("summary", "description", "runbook_url"):
            if not a.annotations.get(key, "").strip():
                problems.append(f"{where}: no {key} annotation")
        if a.annotations.get("runbook_url") != f"{rules.RUNBOOK_BASE_URL}{a.name}.md":
            problems.append(f"{where}: runbook_url should be {rules.RUNBOOK_BASE_URL}{a.name}.md")
        if not (rules.RUNBOOKS_DIR / f"{a.name}.md").is_file():
            problems.append(f"{where}: no runbook alerts/runbooks/{a.name}.md")
    assert not problems, "\n".join(problems)


def test_runbooks_follow_the_template() -> None:
    alerts = {a.name: a for a in rules.alerts()}
    problems: list[str] = []
    for path in rules.runbook_files():
        text = path.read_text(encoding="utf-8")
        if path.stem not in alerts:
            problems.append(f"{path.name}: no alert of that name (orphan runbook)")
            continue
        if not text.startswith(f"# {path.stem}\n"):
            problems.append(f"{path.name}: should start with '# {path.stem}'")
        severity = alerts[path.stem].labels["severity"]
        if f"**Severity:** {severity}" not in text:
            problems.append(f"{path.name}: should state '**Severity:** {severity}' as the rule does")
        positions = [text.find(f"\n{s}\n") for s in RUNBOOK_SECTIONS]
        if -1 in positions or positions != sorted(positions):
            problems.append(f"{path.name}: needs the sections {RUNBOOK_SECTIONS} in that order")
        if not rules.runbook_queries(text):
            problems.append(f"{path.name}: no ```promql block to start the investigation from")
    assert not problems, "\n".join(problems)


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for _, group in _unit_tests():
        for case in group.get("alert_rule_test") or []:
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {a.name for a in rules.alerts()}
    assert names <= firing, f"alerts no unit test shows firing: {sorted(names - firing)}"
    assert names <= quiet, f"alerts no unit test shows staying quiet: {sorted(names - quiet)}"
    assert (firing | quiet) <= names, f"unit tests name unknown alerts: {sorted((firing | quiet) - names)}"


# -- metrics and labels -----------------------------------------------------------------------------


def test_queries_read_metrics_and_labels_that_exist(known_series: dict[str, set[str]]) -> None:
    """A misspelt metric or label never matches, so its alert can never fire: check aftershock.metrics."""
    problems: list[str] = []
    exprs = list(rules.iter_exprs())
    assert {e.kind for e in exprs} == {"record", "alert", "template", "runbook"}
    for e in exprs:
        where = f"{e.source} ({e.kind} {e.name})"
        found = selectors(e.expr)
        assert found or e.expr.startswith("vector("), f"{where}: no series selector in {e.expr!r}"
        usable = set(TARGET_LABELS)
        for sel in found:
            if sel.metric not in known_series:
                problems.append(f"{where}: {sel.metric} is neither in aftershock.metrics nor recorded")
                continue
            usable |= known_series[sel.metric]
            problems += [f"{where}: {sel.metric} has no label {lb!r}" for lb in sorted(sel.labels - usable)]
        problems += [
            f"{where}: no series in the query has label {lb!r}"
            for lb in sorted(grouping_labels(e.expr) - usable)
        ]
    assert not problems, "\n".join(problems)


def test_unit_test_input_is_what_the_services_export(known_series: dict[str, set[str]]) -> None:
    """Input series must look like a real scrape, or the unit tests prove nothing about production."""
    problems: list[str] = []
    for path, group in _unit_tests():
        for series in group.get("input_series") or []:
            (sel,) = selectors(series["series"])
            labels = known_series.get(sel.metric)
            if labels is None:
                problems.append(f"{path.name}: input {sel.metric} is not exported by any service")
            elif sel.labels - labels:
                unknown = sorted(sel.labels - labels)
                problems.append(f"{path.name}: input {sel.metric} has unknown labels {unknown}")
    assert not problems, "\n".join(problems)


def test_helper_lists_every_rule_and_runbook_query() -> None:
    exprs = list(rules.iter_exprs())
    rule_count = sum(1 for _ in rules.iter_rules())
    assert sum(1 for e in exprs if e.kind in ("record", "alert")) == rule_count
    assert {e.name for e in exprs if e.kind == "runbook"} == {a.name for a in rules.alerts()}
    assert rules.template_queries('{{ with query `a{b="c"}` }}{{ end }} {{ query "d{e=\\"f\\"}" }}') == [
        'a{b="c"}',
        'd{e="f"}',
    ]
    assert rules.runbook_queries("x\n```promql\nsum(up)\n```\n```\nnot promql\n```\n") == ["sum(up)"]
