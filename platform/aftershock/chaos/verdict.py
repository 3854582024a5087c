"""Judging a drill: the steady-state hypothesis and each expectation, from what clients saw
(records) and what the services reported (metric samples)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

from aftershock.chaos.answers import answer_checks
from aftershock.chaos.check import Check, check
from aftershock.chaos.expectations import metric_checks
from aftershock.chaos.keyed import keyed_checks
from aftershock.chaos.record import Record
from aftershock.chaos.sampler import Sample
from aftershock.chaos.spec import MIN_OBSERVATION_S, Drill

Verdict = Literal["pass", "fail", "too_short"]
# The command's exit code per verdict (2 is a usage error).
EXIT_CODES: dict[Verdict, int] = {"pass": 0, "fail": 1, "too_short": 3}


def verdict_of(checks: Sequence[Check]) -> Verdict:
    """A drill too short to judge is neither passed nor failed; otherwise any failed check fails it."""
    if any(c.outcome == "too_short" for c in checks):
        return "too_short"
    return "fail" if any(c.outcome == "fail" for c in checks) else "pass"


def _p99(values: Sequence[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(0.99 * len(s)))]


def _rate(records: Sequence[Record]) -> float:
    return sum(r.ok for r in records) / len(records)


def _overlaps_fault(drill: Drill, r: Record) -> bool:
    """Whether the request was in flight at some moment of the fault window: one sent just before
    a fault and caught by it is the fault's, not evidence about the steady state."""
    return r.started < drill.fault_end_s and r.started + r.latency_s > drill.fault_start_s


def steady(drill: Drill, records: Sequence[Record]) -> list[Record]:
    """Requests the faults never touched: done before the first began, or sent after the last
    ended and the system's settle window passed."""
    settled = drill.fault_end_s + drill.settle_s
    return [
        r for r in records if not _overlaps_fault(drill, r) and not drill.fault_end_s <= r.started < settled
    ]


def during_fault(drill: Drill, records: Sequence[Record]) -> list[Record]:
    """Requests in flight during the fault window, those it caught mid-way included."""
    return [r for r in records if _overlaps_fault(drill, r)]


def judge(
    drill: Drill,
    records: Sequence[Record],
    samples: Sequence[Sample],
    aborted: str | None,
    fired_alerts: set[str] | None = None,
    unfinished: Sequence[float] = (),
) -> list[Check]:
    """`fired_alerts`: alert names seen firing during the drill (None: no Prometheus to ask);
    `unfinished`: how long each request the drill's end cut off had been waiting."""

    short = drill.too_short()
    if short:
        return [Check("drill long enough to judge", "too_short", short)]
    checks: list[Check] = []
    e = drill.expect
    if aborted:
        checks.append(check("no abort condition met", False, aborted))
    checks += _hypothesis(drill, records)
    if e.max_error_rate_during_fault is not None:
        hit = during_fault(drill, records)
        if not hit:
            checks.append(check("error rate during the fault", False, "no requests during the fault"))
        else:
            err = 1 - _rate(hit)
            checks.append(
                check(
                    "error rate during the fault",
                    err <= e.max_error_rate_during_fault,
                    f"{err:.2%} of {len(hit)} requests (at most {e.max_error_rate_during_fault:.2%})",
                )
            )
    if e.recovery_within_s is not None:
        checks.append(_recovery(drill, records))
    if e.no_duplicate_generations:
        checks.append(_duplicates(records, e.min_repeated_keys))
    checks += answer_checks(drill, records, unfinished)
    checks += metric_checks(drill, records, samples)
    checks += keyed_checks(e.min_goodput, e.max_lost, records, samples)
    for alert in e.alerts:
        if fired_alerts is None:
            checks.append(
                Check(f"alert {alert} fired", "skipped", "needs --prometheus (staging); not evaluated")
            )
        else:
            firing = alert in fired_alerts
            checks.append(
                check(
                    f"alert {alert} fired", firing, "firing" if firing else "not seen firing during the drill"
                )
            )
    return checks


def _hypothesis(drill: Drill, records: Sequence[Record]) -> list[Check]:
    h = drill.hypothesis
    calm = steady(drill, records)
    if not calm:
        return [check("steady state: success rate", False, "no requests outside the fault windows")]
    rate = _rate(calm)
    checks = [
        check(
            "steady state: success rate",
            rate >= h.min_success_rate,
            f"{rate:.2%} of {len(calm)} requests (hypothesis: at least {h.min_success_rate:.2%})",
        )
    ]
    ok = [r for r in calm if r.ok]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    if h.max_p99_ttft_s is not None and ttfts:
        p = _p99(ttfts)
        checks.append(
            check(
                "steady state: p99 TTFT", p <= h.max_p99_ttft_s, f"{p:.3f}s (hypothesis: {h.max_p99_ttft_s}s)"
            )
        )
    if h.max_p99_latency_s is not None and ok:
        p = _p99([r.latency_s for r in ok])
        checks.append(
            check(
                "steady state: p99 latency",
                p <= h.max_p99_latency_s,
                f"{p:.3f}s (hypothesis: {h.max_p99_latency_s}s)",
            )
        )
    return checks


def _recovery(drill: Drill, records: Sequence[Record]) -> Check:
    """First moment after the last rollback from which every later 2 s window meets the
    hypothesis, with at least MIN_OBSERVATION_S of load after it to rest on."""
    limit = drill.expect.recovery_within_s
    assert limit is not None
    end = drill.fault_end_s
    after = [r for r in records if r.started >= end]
    if not after:
        return check("recovery after rollback", False, "no requests after the fault")
    horizon = max(r.started for r in after)
    t = end
    while t + MIN_OBSERVATION_S <= horizon:
        later = [r for r in after if r.started >= t]
        windows = [[r for r in later if w <= r.started < w + 2.0] for w in _frange(t, horizon, 1.0)]
        if all(not win or _rate(win) >= drill.hypothesis.min_success_rate for win in windows):
            took = t - end
            return check(
                "recovery after rollback",
                took <= limit,
                f"recovered {took:.1f}s after rollback (within {limit:g}s)",
            )
        t += 0.5
    return check(
        "recovery after rollback",
        False,
        f"not recovered with {MIN_OBSERVATION_S:g}s left to observe "
        f"({horizon - end:.1f}s of load after rollback)",
    )


def _frange(start: float, stop: float, step: float) -> list[float]:
    out = []
    x = start
    while x <= stop:
        out.append(x)
        x += step
    return out


def _duplicates(records: Sequence[Record], min_repeated: int) -> Check:
    texts: dict[str, set[str]] = defaultdict(set)
    answers: dict[str, int] = defaultdict(int)
    for r in records:
        if r.ok and r.idempotency_key:
            texts[r.idempotency_key].add(r.text)
            answers[r.idempotency_key] += 1
    split = sorted(k for k, v in texts.items() if len(v) > 1)
    repeated = sum(1 for n in answers.values() if n > 1)
    if split:
        return check(
            "no duplicate generations",
            False,
            f"{len(split)} keys answered with different texts: {', '.join(split[:5])}",
        )
    return check(
        "no duplicate generations",
        repeated >= min_repeated,
        f"{len(texts)} keys, {repeated} answered more than once (at least {min_repeated}), one text each",
    )
