"""Negative controls: each kind of check fails, in a real drill on a real stack, when the
mechanism it guards is turned off or broken. A check counts only once it has been seen failing;
chaos/README.md lists these with what each proves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.chaos.test_drills import _drill
from tests.conftest import ARTIFACTS, TESTS

pytestmark = pytest.mark.e2e

CHAOS = TESTS.parent / "chaos"
CONTROLS = TESTS / "chaos" / "controls"

CASES = [
    # (id, drill file, extra arguments, checks that must fail)
    (
        "retries-off",
        CHAOS / "replica-crash.yaml",
        ["--backend-env", "AFTERSHOCK_BACKEND_RETRY_MAX_ATTEMPTS=1"],
        ["streams resumed mid-stream on another replica"],
    ),
    (
        "breakers-never-open",
        CHAOS / "reset-peer-backend-inference.yaml",
        ["--backend-env", "AFTERSHOCK_BACKEND_BREAKER_FAIL_MAX=100000"],
        ["breaker inference:inference-0 opened"],
    ),
    (
        "dedupe-off-and-backend-untraced",
        CONTROLS / "dedupe-off.yaml",
        ["--backend-env", "OTEL_SDK_DISABLED=true"],
        ["no duplicate generations", "trace ids found in exported traces"],
    ),
    (
        "replica-left-dead",
        CHAOS / "replica-crash.yaml",
        ["--skip-rollback", "crash-inference-0"],
        ["every replica back in rotation"],
    ),
    (
        "fault-breaks-the-hypothesis",
        CONTROLS / "only-replica-down.yaml",
        ["--skip-rollback", "down-inference-0"],
        ["steady state: success rate", "recovery after rollback"],
    ),
    (
        "retry-budget-off",
        CHAOS / "retry-storm.yaml",
        [
            "--backend-env",
            "AFTERSHOCK_BACKEND_RETRY_BUDGET_RATIO=10",
            "--backend-env",
            "AFTERSHOCK_BACKEND_RETRY_BUDGET_MIN_PER_S=1000",
        ],
        ["retry amplification"],
    ),
    (
        "ejection-never-ends",
        CHAOS / "replica-recovers.yaml",
        [
            "--backend-env",
            "AFTERSHOCK_BACKEND_BREAKER_RESET_TIMEOUT_S=600",
            "--backend-env",
            "AFTERSHOCK_BACKEND_BREAKER_RESET_TIMEOUT_MAX_S=600",
        ],
        ["replica inference-0 serves again"],
    ),
    (
        "hedging-off",
        CHAOS / "hedge-slow-replica.yaml",
        ["--backend-env", "AFTERSHOCK_BACKEND_HEDGE_ENABLED=false"],
        ["TTFT p99 during the faults"],
    ),
]


@pytest.mark.parametrize(("name", "path", "extra", "failing"), CASES, ids=[c[0] for c in CASES])
def test_the_check_fails_when_its_mechanism_is_off(
    name: str, path: Path, extra: list[str], failing: list[str]
) -> None:
    out = ARTIFACTS / "drills-controls" / name
    result = _drill(path, out, *extra)
    assert result.returncode == 1, result.stdout[-2000:]
    report = (out / path.stem / "report.md").read_text()
    assert ": FAILED" in report.splitlines()[0]
    outcomes = {
        c["name"]: c["outcome"] for c in json.loads((out / path.stem / "report.json").read_text())["checks"]
    }
    for check in failing:
        assert outcomes.get(check) == "fail", (check, outcomes)
