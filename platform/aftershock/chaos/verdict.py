"""Judging a drill: the steady-state hypothesis and each expectation, from what clients saw
(records) and what the services reported (metric samples)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aftershock.chaos.sampler import Sample
from aftershock.chaos.spec import Drill
from aftershock.chaos.users import Record

Outcome = Literal["pass", "fail", "skipped"]
# When a drill does not say how long recovery may take, requests this soon after the last
# rollback are not held to the steady-state hypothesis.
DEFAULT_SETTLE_S = 3.0


@dataclass(frozen=True)
class Check:
    name: str
    outcome: Outcome
    detail: str


def _p99(values: Sequence[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(0.99 * len(s)))]


def _rate(records: Sequence[Record]) -> float:
    return sum(r.ok for r in records) / len(records)


def _check(name: str, passed: bool, detail: str) -> Check:
    return Check(name, "pass" if passed else "fail", detail)


def steady(drill: Drill, records: Sequence[Record]) -> list[Record]:
    settle = drill.expect.recovery_within_s or DEFAULT_SETTLE_S
    return [r for r in records if r.started < drill.fault_start_s or r.started >= drill.fault_end_s + settle]


def during_fault(drill: Drill, records: Sequence[Record]) -> list[Record]:
    return [r for r in records if drill.fault_start_s <= r.started < drill.fault_end_s]


def judge(
    drill: Drill,
    records: Sequence[Record],
    samples: Sequence[Sample],
    aborted: str | None,
    fired_alerts: set[str] | None = None,
) -> list[Check]:
    """`fired_alerts`: alert names seen firing during the drill (None: no Prometheus to ask)."""
    checks: list[Check] = []
    h, e = drill.hypothesis, drill.expect
    if aborted:
        checks.append(_check("no abort condition met", False, aborted))
    calm = steady(drill, records)
    if not calm:
        checks.append(_check("steady state: success rate", False, "no requests outside the fault windows"))
    else:
        rate = _rate(calm)
        checks.append(
            _check(
                "steady state: success rate",
                rate >= h.min_success_rate,
                f"{rate:.2%} of {len(calm)} requests (hypothesis: at least {h.min_success_rate:.2%})",
            )
        )
        ok = [r for r in calm if r.ok]
        ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
        if h.max_p99_ttft_s is not None and ttfts:
            p = _p99(ttfts)
            checks.append(
                _check(
                    "steady state: p99 TTFT",
                    p <= h.max_p99_ttft_s,
                    f"{p:.3f}s (hypothesis: {h.max_p99_ttft_s}s)",
                )
            )
        if h.max_p99_latency_s is not None and ok:
            p = _p99([r.latency_s for r in ok])
            checks.append(
                _check(
                    "steady state: p99 latency",
                    p <= h.max_p99_latency_s,
                    f"{p:.3f}s (hypothesis: {h.max_p99_latency_s}s)",
                )
            )
    if e.max_error_rate_during_fault is not None:
        hit = during_fault(drill, records)
        if not hit:
            checks.append(_check("error rate during the fault", False, "no requests during the fault"))
        else:
            err = 1 - _rate(hit)
            checks.append(
                _check(
                    "error rate during the fault",
                    err <= e.max_error_rate_during_fault,
                    f"{err:.2%} of {len(hit)} requests (at most {e.max_error_rate_during_fault:.2%})",
                )
            )
    for target in e.breaker_opened:
        opened = [s.t for s in samples if s.breakers.get(target) == 1]
        detail = f"open from {opened[0]:.1f}s" if opened else "never seen open"
        checks.append(_check(f"breaker {target} opened", bool(opened), detail))
    if e.recovery_within_s is not None:
        checks.append(_recovery(drill, records))
    if e.no_duplicate_generations:
        checks.append(_duplicates(records))
    if e.min_retries is not None:
        n = _delta(samples, "aftershock_retries_total")
        checks.append(
            _check("retries happened", n >= e.min_retries, f"{n:.0f} retries (at least {e.min_retries})")
        )
    if e.min_failovers is not None:
        n = _delta(samples, "aftershock_failovers_total")
        checks.append(
            _check(
                "failovers happened", n >= e.min_failovers, f"{n:.0f} failovers (at least {e.min_failovers})"
            )
        )
    for alert in e.alerts:
        if fired_alerts is None:
            checks.append(
                Check(f"alert {alert} fired", "skipped", "needs --prometheus (staging); not evaluated")
            )
        else:
            checks.append(
                _check(
                    f"alert {alert} fired",
                    alert in fired_alerts,
                    "firing" if alert in fired_alerts else "not seen firing during the drill",
                )
            )
    return checks


def _delta(samples: Sequence[Sample], name: str) -> float:
    if not samples:
        return 0.0
    return samples[-1].counters.get(name, 0.0) - samples[0].counters.get(name, 0.0)


def _recovery(drill: Drill, records: Sequence[Record]) -> Check:
    """First second after the last rollback from which every later 2 s window meets the hypothesis."""
    limit = drill.expect.recovery_within_s
    assert limit is not None
    end = drill.fault_end_s
    after = [r for r in records if r.started >= end]
    if not after:
        return _check("recovery after rollback", False, "no requests after the fault")
    horizon = max(r.started for r in after)
    t = end
    while t <= horizon:
        later = [r for r in after if r.started >= t]
        windows = [[r for r in later if w <= r.started < w + 2.0] for w in _frange(t, horizon, 1.0)]
        if all(not win or _rate(win) >= drill.hypothesis.min_success_rate for win in windows):
            took = t - end
            return _check(
                "recovery after rollback",
                took <= limit,
                f"recovered {took:.1f}s after rollback (within {limit}s)",
            )
        t += 0.5
    return _check(
        "recovery after rollback", False, f"not recovered by the end of the load ({horizon - end:.1f}s)"
    )


def _frange(start: float, stop: float, step: float) -> list[float]:
    out = []
    x = start
    while x <= stop:
        out.append(x)
        x += step
    return out


def _duplicates(records: Sequence[Record]) -> Check:
    texts: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.ok and r.idempotency_key:
            texts[r.idempotency_key].add(r.text)
    if not texts:
        return _check("no duplicate generations", False, "no keyed requests succeeded")
    split = sorted(k for k, v in texts.items() if len(v) > 1)
    repeats = sum(1 for r in records if r.ok and r.idempotency_key) - len(texts)
    detail = (
        f"{len(texts)} keys, {repeats} repeated requests, all answered with one text"
        if not split
        else f"{len(split)} keys answered with different texts: {', '.join(split[:5])}"
    )
    return _check("no duplicate generations", not split, detail)
