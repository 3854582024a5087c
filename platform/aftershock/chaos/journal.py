"""A Chaos Toolkit journal (journal.json) for a drill, so tools that read Chaos Toolkit results
(reports, dashboards) read ours: the experiment as Chaos Toolkit would state it, the steady-state
probes before, during and after the faults, the method's activities and the rollbacks.

The activities name real functions of this module, so the experiment in a journal validates with
chaostoolkit-lib and its network faults can be replayed with `chaos run`."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aftershock.chaos.check import Check
from aftershock.chaos.spec import Drill, Fault
from aftershock.chaos.verdict import Verdict


@dataclass(frozen=True)
class Step:
    """A fault applied or rolled back, at wall-clock times."""

    fault: Fault
    apply: bool
    start: datetime
    end: datetime
    error: str = ""


def apply_fault(toxiproxy_url: str, fault: dict[str, Any]) -> None:
    """Applies one drill fault (a toxic or a proxy outage) through a Toxiproxy API."""
    from aftershock.chaos.faults import FaultInjector

    FaultInjector(toxiproxy_url).apply(Fault.model_validate(fault))


def rollback_fault(toxiproxy_url: str, fault: dict[str, Any]) -> None:
    """Rolls back one drill fault applied by apply_fault."""
    from aftershock.chaos.faults import FaultInjector

    FaultInjector(toxiproxy_url).rollback(Fault.model_validate(fault))


def check_passed(report: str, check: str) -> bool:
    """A steady-state probe: whether the named check passed in a drill's report.json."""
    data = json.loads(Path(report).read_text())
    return any(c["name"] == check and c["outcome"] == "pass" for c in data["checks"])


def _fault_activity(fault: Fault, toxiproxy_url: str, func: str) -> dict[str, Any]:
    return {
        "type": "action",
        "name": f"{'rollback' if func == 'rollback_fault' else 'apply'} {fault.name}",
        "provider": {
            "type": "python",
            "module": __name__,
            "func": func,
            "arguments": {"toxiproxy_url": toxiproxy_url, "fault": fault.model_dump(mode="json")},
        },
    }


def _probe(check: Check, report: Path) -> dict[str, Any]:
    return {
        "type": "probe",
        "name": check.name,
        "tolerance": True,
        "provider": {
            "type": "python",
            "module": __name__,
            "func": "check_passed",
            "arguments": {"report": str(report), "check": check.name},
        },
    }


def experiment(drill: Drill, toxiproxy_url: str, checks: Sequence[Check], report: Path) -> dict[str, Any]:
    return {
        "title": drill.title,
        "description": drill.description.strip() or drill.title,
        "tags": ["aftershock", "drill"],
        "steady-state-hypothesis": {
            "title": "steady state and expectations",
            "probes": [_probe(c, report) for c in checks if c.outcome in ("pass", "fail")],
        },
        "method": [_fault_activity(f, toxiproxy_url, "apply_fault") for f in drill.faults],
        "rollbacks": [_fault_activity(f, toxiproxy_url, "rollback_fault") for f in drill.faults],
    }


def _run(
    activity: dict[str, Any], start: datetime, end: datetime, ok: bool, output: Any, error: str = ""
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "activity": activity,
        "output": output,
        "status": "succeeded" if ok else "failed",
        "start": start.isoformat(),
        "end": end.isoformat(),
        "duration": (end - start).total_seconds(),
    }
    if error:
        entry["exception"] = [error]
    return entry


def _state(checks: Sequence[Check], report: Path, at: datetime) -> dict[str, Any]:
    probes = [_run(_probe(c, report), at, at, True, c.outcome == "pass") for c in checks]
    return {"steady_state_met": all(c.outcome != "fail" for c in checks), "probes": probes}


def write_journal(
    out: Path,
    drill: Drill,
    toxiproxy_url: str,
    checks: Sequence[Check],
    verdict: Verdict,
    steps: Sequence[Step],
    started: datetime,
    aborted: str | None,
) -> Path:
    """`checks` are the verdict's; they are sorted into before (the hypothesis, on requests before
    the faults), during (the fault window) and after (everything judged after rollback)."""
    try:  # the journal's format is chaostoolkit-lib's; the library itself is only a dev dependency
        from chaoslib import __version__ as chaoslib_version  # type: ignore[import-untyped]
    except ImportError:
        chaoslib_version = "not installed"
    report = out / "report.json"
    exp = experiment(drill, toxiproxy_url, checks, report)
    ended = datetime.now(UTC)
    steady = [c for c in checks if c.name.startswith("steady state")]
    during = [c for c in checks if "during the fault" in c.name]
    journal = {
        "chaoslib-version": chaoslib_version,
        "platform": platform.platform(),
        "node": platform.node(),
        "experiment": exp,
        "start": started.isoformat(),
        "end": ended.isoformat(),
        "duration": (ended - started).total_seconds(),
        "status": "aborted" if aborted else ("failed" if verdict == "too_short" else "completed"),
        "deviated": verdict == "fail",
        "steady_states": {
            "before": _state(steady, report, started),
            "during": [_state(during, report, ended)] if during else [],
            "after": _state(checks, report, ended),
        },
        "run": [
            _run(
                _fault_activity(s.fault, toxiproxy_url, "apply_fault"),
                s.start,
                s.end,
                not s.error,
                None,
                s.error,
            )
            for s in steps
            if s.apply
        ],
        "rollbacks": [
            _run(
                _fault_activity(s.fault, toxiproxy_url, "rollback_fault"),
                s.start,
                s.end,
                not s.error,
                None,
                s.error,
            )
            for s in steps
            if not s.apply
        ],
    }
    path = out / "journal.json"
    path.write_text(json.dumps(journal, indent=1))
    return path
