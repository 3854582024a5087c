"""The abort rule: a drill stops its load on a high error rate over enough recent requests, never
on the handful of fast failures a drill can start with."""

from __future__ import annotations

from aftershock.chaos.abort import abort_reason
from aftershock.chaos.record import Record
from aftershock.chaos.spec import Abort


def _records(failed: int, ok: int = 0, started: float = 1.0) -> list[Record]:
    out = [Record(started, 0.01, None, False, 429, False) for _ in range(failed)]
    return out + [Record(started, 0.01, None, True, 200, False) for _ in range(ok)]


def test_a_few_failures_at_the_start_do_not_abort() -> None:
    # retry-storm's CI failure: 6 of 6 requests refused 0.2 s in, a healthy drill aborted.
    assert abort_reason(Abort(), _records(6, started=0.0), now=0.2) is None
    assert abort_reason(Abort(), _records(19), now=1.5) is None


def test_enough_failures_in_the_window_abort() -> None:
    reason = abort_reason(Abort(), _records(20), now=1.5)
    assert reason == "error rate 100% over the last 5s at 1.5s"
    assert abort_reason(Abort(min_requests=5), _records(6, started=0.0), now=0.2) is not None


def test_the_rate_must_exceed_the_bound_over_the_window_only() -> None:
    assert abort_reason(Abort(), _records(18, ok=2), now=1.5) is None  # 90%: not above 0.9
    assert abort_reason(Abort(), _records(19, ok=1), now=1.5) is not None  # 95%
    # Failures older than the window do not count.
    old = _records(30, started=0.0)
    assert abort_reason(Abort(window_s=5), old + _records(0, ok=20, started=9.0), now=10.0) is None
