"""Every PromQL expression in alerts/, for tests that check them against promtool and aftershock.metrics here,
or evaluate them against a real Prometheus that scraped the running stack.

tests/alerts is not a package: load this module by path.

    import importlib.util
    spec = importlib.util.spec_from_file_location("aftershock_alert_rules", "tests/alerts/alert_rules.py")
    alert_rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(alert_rules)
    for q in alert_rules.iter_exprs():
        prom.query(q.expr)   # each must evaluate without error; most alert expressions are empty

`python tests/alerts/alert_rules.py` prints them as JSON lines. Expressions come from four places:
rule `expr`s (kind "record" or "alert"), `query` calls inside alert annotation templates
("template"), and ```promql blocks in the runbooks ("runbook"). Needs only the standard library and
PyYAML.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS_DIR = ROOT / "alerts"
RUNBOOKS_DIR = ALERTS_DIR / "runbooks"
UNIT_TESTS_DIR = ALERTS_DIR / "tests"
# Every alert's runbook_url is this plus "<AlertName>.md".
RUNBOOK_BASE_URL = "https://github.com/aftershock/aftershock/blob/main/alerts/runbooks/"
SEVERITIES = ("page", "ticket")


class Rule(NamedTuple):
    file: Path
    group: str
    kind: str  # "alert" or "record"
    name: str  # alert name or recorded series name
    expr: str
    labels: dict[str, str]
    annotations: dict[str, str]
    for_: str  # "" when the rule has no `for:`


class Expr(NamedTuple):
    kind: str  # "record", "alert", "template" or "runbook"
    name: str  # the rule's name; for a runbook, the alert it documents
    source: str  # file relative to the repository root
    expr: str


def rule_files() -> list[Path]:
    return sorted(ALERTS_DIR.glob("*.rules.yml"))


def unit_test_files() -> list[Path]:
    return sorted(UNIT_TESTS_DIR.glob("*.yml"))


def runbook_files() -> list[Path]:
    return sorted(p for p in RUNBOOKS_DIR.glob("*.md") if p.name != "README.md")


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_Loader)  # a safe loader, libyaml's when available


def iter_rules(files: Iterable[Path] | None = None) -> Iterator[Rule]:
    for path in rule_files() if files is None else files:
        for group in load_yaml(path).get("groups") or []:
            for rule in group.get("rules") or []:
                kind = "alert" if "alert" in rule else "record"
                yield Rule(
                    path,
                    group["name"],
                    kind,
                    rule[kind],
                    str(rule["expr"]).strip(),
                    {k: str(v) for k, v in (rule.get("labels") or {}).items()},
                    {k: str(v) for k, v in (rule.get("annotations") or {}).items()},
                    str(rule.get("for", "")),
                )


def alerts() -> list[Rule]:
    return [r for r in iter_rules() if r.kind == "alert"]


_TEMPLATE_QUERY = re.compile(r"""\bquery\s+(?:`([^`]*)`|"((?:\\.|[^"\\])*)")""")
# A fence may be indented (inside a list item); its body is indented alike.
_PROMQL_BLOCK = re.compile(r"^[ \t]*```promql[ \t]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)


def template_queries(template: str) -> list[str]:
    """PromQL passed to `query` in an alert template (raw `...` or "..." Go strings)."""
    out = []
    for raw, quoted in _TEMPLATE_QUERY.findall(template):
        out.append(raw if raw else json.loads(f'"{quoted}"'))
    return out


def runbook_queries(text: str) -> list[str]:
    """The body of every ```promql fenced block (one query per block)."""
    return [textwrap.dedent(block).strip() for block in _PROMQL_BLOCK.findall(text)]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def iter_exprs() -> Iterator[Expr]:
    """Every PromQL expression in alerts/: rules, annotation template queries, runbook blocks."""
    for rule in iter_rules():
        yield Expr(rule.kind, rule.name, _rel(rule.file), rule.expr)
        for text in rule.annotations.values():
            for query in template_queries(text):
                yield Expr("template", rule.name, _rel(rule.file), query)
    for path in runbook_files():
        for query in runbook_queries(path.read_text(encoding="utf-8")):
            yield Expr("runbook", path.stem, _rel(path), query)


if __name__ == "__main__":
    for e in iter_exprs():
        print(json.dumps(e._asdict()))
