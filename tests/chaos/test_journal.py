"""journal.json is a Chaos Toolkit journal: chaostoolkit-lib validates it, and its status and
deviation follow the verdict."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aftershock.chaos.journal import Step, check_passed, write_journal
from aftershock.chaos.report import write_report
from aftershock.chaos.spec import load_drill
from aftershock.chaos.verdict import judge

from tests.chaos import fed
from tests.chaos.ctk import load_journal
from tests.conftest import TESTS


@pytest.mark.parametrize("broken", [False, True])
def test_a_journal_validates_and_follows_the_verdict(tmp_path: Path, broken: bool) -> None:
    drill = load_drill(TESTS.parent / "chaos" / "reset-peer-backend-inference.yaml").scaled(0.5)
    end = drill.fault_end_s
    records = fed.records(drill, (lambda t: t >= end) if broken else (lambda t: False))
    samples = fed.healthy_samples(drill)
    checks = judge(drill, records, samples, None)
    verdict = write_report(tmp_path, drill, checks, records, samples, {"edge": "fed"}, None)
    now = datetime.now(UTC)
    (fault,) = drill.faults
    steps = [Step(fault, True, now, now + timedelta(seconds=0.01)), Step(fault, False, now, now)]
    path = write_journal(tmp_path, drill, "http://127.0.0.1:8474", checks, verdict, steps, now, None)

    journal = load_journal(path)
    assert journal["status"] == "completed"
    assert journal["deviated"] is broken
    assert journal["steady_states"]["after"]["steady_state_met"] is not broken
    assert [e["activity"]["name"] for e in journal["run"]] == ["apply rst-inference-0"]
    assert [e["activity"]["name"] for e in journal["rollbacks"]] == ["rollback rst-inference-0"]
    # The probes are real: each reads its check back from report.json.
    probe = journal["steady_states"]["after"]["probes"][0]
    args = probe["activity"]["provider"]["arguments"]
    assert check_passed(**args) is probe["output"]


def test_a_drill_too_short_to_judge_writes_a_failed_journal(tmp_path: Path) -> None:
    drill = load_drill(TESTS.parent / "chaos" / "down-backend-inference.yaml").scaled(0.2)
    checks = judge(drill, [], [], None)
    verdict = write_report(tmp_path, drill, checks, [], [], {"stack": "not started"}, None)
    path = write_journal(tmp_path, drill, "", checks, verdict, [], datetime.now(UTC), None)
    journal = load_journal(path)
    assert verdict == "too_short"
    assert journal["status"] == "failed" and journal["deviated"] is False
