"""Expectations judged on what the backend reported (sampled /metrics): breakers opening and
closing again, retries, resumed streams, replicas back in rotation, dedupe after an outage, and
retry amplification."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aftershock.chaos.check import Check, check
from aftershock.chaos.record import Record
from aftershock.chaos.sampler import HEDGES_STARTED, RESUMED_FAILOVERS, Sample
from aftershock.chaos.spec import Drill

_DEDUPED = ("claimed", "joined", "replayed", "taken_over")


def delta(samples: Sequence[Sample], name: str) -> float:
    if not samples:
        return 0.0
    return samples[-1].counters.get(name, 0.0) - samples[0].counters.get(name, 0.0)


def calls_per_request(samples: Sequence[Sample], records: Sequence[Record]) -> float:
    """Backend->inference tries per edge request over the drill (1.0: no amplification)."""
    return delta(samples, "aftershock_upstream_requests_total") / max(1, len(records))


def metric_checks(drill: Drill, records: Sequence[Record], samples: Sequence[Sample]) -> list[Check]:
    e = drill.expect
    checks: list[Check] = []
    for target in e.breaker_opened:
        opened = [s.t for s in samples if s.breakers.get(target) == 1]
        detail = f"open from {opened[0]:.1f}s" if opened else "never seen open"
        checks.append(check(f"breaker {target} opened", bool(opened), detail))
        close_within = e.breakers_close_within_s or e.recovery_within_s
        if e.breakers_close and close_within is not None:
            name = f"breaker {target} closed again"
            checks.append(_settled(drill, samples, name, _closed(target), close_within))
    back_within = e.replicas_back_within_s or e.recovery_within_s
    if e.replicas_back and back_within is not None:
        names = sorted({r for s in samples for r in s.replicas})
        checks.append(
            _settled(
                drill,
                samples,
                "every replica back in rotation",
                lambda s: bool(names) and all(s.replicas.get(r) == 1 for r in names),
                back_within,
            )
        )
    if e.replica_serves_again_within_s is not None:
        checks += _serving_again(drill, samples, e.replica_serves_again_within_s)
    if e.min_retries is not None:
        n = delta(samples, "aftershock_retries_total")
        checks.append(
            check("retries happened", n >= e.min_retries, f"{n:.0f} retries (at least {e.min_retries})")
        )
    if e.min_failovers is not None:
        n = delta(samples, RESUMED_FAILOVERS)
        checks.append(
            check(
                "streams resumed mid-stream on another replica",
                n >= e.min_failovers,
                f"{n:.0f} resumed (at least {e.min_failovers}; refused and before-first-token tries "
                "not counted)",
            )
        )
    if e.dedupe_resumes:
        checks.append(_dedupe_resumes(drill, samples))
    if e.max_calls_per_request is not None:
        ratio = calls_per_request(samples, records)
        refused = delta(samples, "aftershock_retry_budget_exhausted_total")
        checks.append(
            check(
                "retry amplification",
                ratio <= e.max_calls_per_request,
                f"{ratio:.3f} backend->inference tries per edge request "
                f"(at most {e.max_calls_per_request:g}), {refused:.0f} retries refused by the budget",
            )
        )
    if e.max_ttft_p99_s is not None:
        checks.append(_ttft_p99(drill, records, e.max_ttft_p99_s))
    if e.max_hedged_share is not None:
        hedged = delta(samples, HEDGES_STARTED)
        share = hedged / max(1, len(records))
        checks.append(
            check(
                "hedges within their share",
                share <= e.max_hedged_share,
                f"{hedged:.0f} hedges for {len(records)} requests: {share:.1%} "
                f"(at most {e.max_hedged_share:.0%})",
            )
        )
    return checks


def _ttft_p99(drill: Drill, records: Sequence[Record], limit: float) -> Check:
    """p99 TTFT of the streams that started while a fault was on (each fault's own window)."""
    windows = [(f.start_s, f.end_s) for f in drill.faults]
    ttfts = sorted(
        r.ttft_s
        for r in records
        if r.stream and r.ok and r.ttft_s is not None and any(a <= r.started < b for a, b in windows)
    )
    if len(ttfts) < 50:
        return check("TTFT p99 during the faults", False, f"only {len(ttfts)} streams: too few for a p99")
    p99 = ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))]
    detail = f"{p99 * 1000:.0f} ms over {len(ttfts)} streams (at most {limit * 1000:.0f} ms)"
    return check("TTFT p99 during the faults", p99 <= limit, detail)


def _closed(target: str) -> Callable[[Sample], bool]:
    return lambda s: s.breakers.get(target) == 0


def _settled(
    drill: Drill, samples: Sequence[Sample], name: str, good: Callable[[Sample], bool], limit: float
) -> Check:
    """`good` holds in every sample from some moment after the last rollback to the end, and that
    moment comes within `limit` seconds."""
    end = drill.fault_end_s
    after = [s for s in samples if s.t >= end]
    since: float | None = None
    for s in after:
        if good(s):
            since = s.t if since is None else since
        else:
            since = None
    if since is None:
        return check(name, False, "not so at the end of the drill")
    took = since - end
    return check(name, took <= limit, f"{took:.1f}s after rollback (within {limit:g}s)")


def _serving_again(drill: Drill, samples: Sequence[Sample], limit: float) -> list[Check]:
    """Each replica is routable and answers tries (OK) again within `limit` seconds of the last
    rollback, and still routable at the end: an ejection that ends by itself."""
    end = drill.fault_end_s
    after = [s for s in samples if s.t >= end]
    names = sorted({r for s in samples for r in s.routable})
    if not after or not names:
        return [check("every replica serves again", False, "no samples of replica routing after rollback")]
    checks = []
    for name in names:
        base = after[0].served.get(name, 0.0)
        back = next((s for s in after if s.routable.get(name) == 1 and s.served.get(name, 0.0) > base), None)
        label = f"replica {name} serves again"
        if back is None:
            checks.append(check(label, False, "no answered try after rollback while routable"))
            continue
        took = back.t - end
        still = after[-1].routable.get(name) == 1
        detail = f"routable and answering {took:.1f}s after rollback (within {limit:g}s)"
        detail += "" if still else "; ejected again at the end"
        checks.append(check(label, took <= limit and still, detail))
    return checks


def _dedupe_resumes(drill: Drill, samples: Sequence[Sample]) -> Check:
    late = [s for s in samples if s.t >= drill.fault_end_s + drill.settle_s]
    if len(late) < 2:
        return check("dedupe works again after the outage", False, "no samples after the recovery window")

    def moved(outcomes: Sequence[str]) -> float:
        return sum(late[-1].dedupe.get(o, 0.0) - late[0].dedupe.get(o, 0.0) for o in outcomes)

    deduped, bypassed = moved(_DEDUPED), moved(("bypassed",))
    return check(
        "dedupe works again after the outage",
        deduped > 0 and bypassed == 0,
        f"after recovery: {deduped:.0f} keyed requests deduplicated, {bypassed:.0f} bypassed",
    )
