"""Verdicts that can fail at any length: every time scales, a drill too short to judge says so,
and requests failing after rollback fail the drills that used to pass them."""

from __future__ import annotations

import pytest
from aftershock.chaos.spec import load_drill
from aftershock.chaos.verdict import during_fault, judge, steady, verdict_of

from tests.chaos import fed
from tests.conftest import TESTS

CHAOS = TESTS.parent / "chaos"
RECOVERING = ["down-backend-inference", "redis-outage", "replica-crash"]


def _load(name: str, scale: float = 0.5):  # type: ignore[no-untyped-def]
    return load_drill(CHAOS / f"{name}.yaml").scaled(scale)


def test_every_time_of_a_drill_scales() -> None:
    drill = load_drill(CHAOS / "redis-outage.yaml")
    short = drill.scaled(0.5)
    assert drill.expect.recovery_within_s is not None
    assert short.expect.recovery_within_s == drill.expect.recovery_within_s / 2
    assert short.abort.window_s == drill.abort.window_s / 2
    assert short.load.duration_s == drill.load.duration_s / 2
    assert short.settle_s == drill.settle_s / 2


@pytest.mark.parametrize("name", RECOVERING)
def test_healthy_records_pass(name: str) -> None:
    """The fed load and samples meet every expectation: what fails below fails on recovery."""
    drill = _load(name)
    checks = judge(drill, fed.records(drill), fed.healthy_samples(drill), None)
    assert verdict_of(checks) == "pass", checks


@pytest.mark.parametrize("name", RECOVERING)
def test_failing_for_4_4s_after_rollback_fails(name: str) -> None:
    drill = _load(name)
    end = drill.fault_end_s
    failing = fed.records(drill, lambda t: end <= t < end + 4.4)
    checks = judge(drill, failing, fed.healthy_samples(drill), None)
    assert verdict_of(checks) == "fail"
    failed = {c.name for c in checks if c.outcome == "fail"}
    assert "recovery after rollback" in failed, checks


def test_a_drill_too_short_to_judge_says_so_and_is_not_a_pass() -> None:
    shorter = _load("down-backend-inference", 0.2)  # 2 s after rollback, needs 1 s + 2 s
    reason = shorter.too_short()
    assert reason and reason.startswith("too short to judge")
    checks = judge(shorter, fed.records(shorter), fed.healthy_samples(shorter), None)
    assert verdict_of(checks) == "too_short"
    assert [c.outcome for c in checks] == ["too_short"]


def test_recovery_needs_load_to_observe_after_it() -> None:
    """Recovering in the last moments of the load is no evidence: the check wants load after it."""
    drill = _load("down-backend-inference")
    horizon = drill.load.duration_s
    late = fed.records(drill, lambda t: drill.fault_start_s <= t < horizon - 1.0)
    checks = judge(drill, late, [], None)
    recovery = next(c for c in checks if c.name == "recovery after rollback")
    assert recovery.outcome == "fail" and "not recovered" in recovery.detail


def test_every_drill_in_the_suite_can_be_judged_at_ci_length() -> None:
    for path in sorted(CHAOS.glob("*.yaml")):
        if path.name != "models.yaml":
            assert load_drill(path).scaled(0.5).too_short() is None, path.stem


def test_a_request_caught_by_the_fault_is_the_faults_not_the_steady_states() -> None:
    """Sent 0.1 s before the resets began, retried on the other replica, 1.5 s to its first token:
    the fault's doing. Judged as steady state, it failed the p99 TTFT hypothesis (1.0 s)."""
    drill = _load("reset-peer-backend-inference")
    records = fed.records(drill)
    start = drill.fault_start_s
    caught = [r for r in records if start - 0.15 < r.started < start][:2]
    for r in caught:
        r.latency_s, r.ttft_s = 1.6, 1.5
    assert caught
    checks = {c.name: c for c in judge(drill, records, fed.healthy_samples(drill), None)}
    assert checks["steady state: p99 TTFT"].outcome == "pass", checks["steady state: p99 TTFT"]
    assert verdict_of(list(checks.values())) == "pass"
    assert set(map(id, caught)) <= set(map(id, during_fault(drill, records)))
    assert not set(map(id, caught)) & set(map(id, steady(drill, records)))


def test_a_request_that_ended_before_the_fault_is_still_steady_state() -> None:
    drill = _load("reset-peer-backend-inference")
    records = fed.records(drill)
    slow = [r for r in records if r.started + 1.2 < drill.fault_start_s][-2:]
    for r in slow:
        r.latency_s, r.ttft_s = 1.1, 1.1
    checks = {c.name: c for c in judge(drill, records, fed.healthy_samples(drill), None)}
    assert checks["steady state: p99 TTFT"].outcome == "fail"
