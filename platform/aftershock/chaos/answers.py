"""Expectations judged on what clients got: whole answers (never a cut answer presented as complete),
no request outliving its deadline, and a model server's Retry-After reaching the client."""

from __future__ import annotations

from collections.abc import Sequence

from aftershock.chaos.check import Check, check
from aftershock.chaos.record import Record
from aftershock.chaos.spec import Drill


def answer_checks(drill: Drill, records: Sequence[Record], unfinished: Sequence[float] = ()) -> list[Check]:
    e = drill.expect
    checks: list[Check] = []
    if e.min_whole_answers is not None:
        checks.append(whole_answers(records, e.min_whole_answers))
    if e.max_latency_s is not None:
        checks.append(no_hang(records, unfinished, e.max_latency_s))
    if e.min_retry_after_answers is not None:
        checks.append(retry_after_reached(drill, records, e.min_retry_after_answers))
    return checks


def whole_answers(records: Sequence[Record], minimum: int) -> Check:
    """Every seeded request that succeeded (a stream that ended with [DONE], a 200 JSON answer) got
    its whole deterministic text: a cut answer presented as complete fails this."""
    name = "no cut answer presented as complete"
    judged = [r for r in records if r.ok and r.expected is not None]
    cut = [r for r in judged if r.text != r.expected]
    if cut:
        ids = ", ".join(r.trace_id or "-" for r in cut[:5])
        detail = f"{len(cut)} of {len(judged)} complete answers differ from their whole text: {ids}"
        return check(name, False, detail)
    return check(
        name,
        len(judged) >= minimum,
        f"{len(judged)} seeded answers, each whole (at least {minimum} compared)",
    )


def no_hang(records: Sequence[Record], unfinished: Sequence[float], limit: float) -> Check:
    """No request took longer than `limit`, counting requests still waiting when the drill ended."""
    name = "no request outlived its deadline"
    if not records:
        return check(name, False, "no requests")
    slow = sorted((r for r in records if r.latency_s > limit), key=lambda r: -r.latency_s)
    hung = [age for age in unfinished if age > limit]
    worst = max(r.latency_s for r in records)
    detail = f"longest {worst:.1f}s over {len(records)} requests (at most {limit:g}s)"
    if slow:
        ids = ", ".join(r.trace_id or "-" for r in slow[:5])
        detail += f"; {len(slow)} longer: {ids}"
    if unfinished:
        detail += f"; {len(unfinished)} cut off by the drill's end after up to {max(unfinished):.1f}s"
    return check(name, not slow and not hung, detail)


def retry_after_reached(drill: Drill, records: Sequence[Record], minimum: int) -> Check:
    """Requests refused while the faults were on got 429 with a Retry-After; the longest one a client
    saw is the longest the drill's model servers asked for (not a wait made up on the way)."""
    windows = [(f.start_s, f.end_s) for f in drill.faults]
    refused = [r for r in records if r.status == 429 and any(a <= r.started < b for a, b in windows)]
    told = [r for r in refused if r.retry_after.isdigit()]
    bare = [r for r in records if r.status == 429 and not r.retry_after.isdigit()]
    asked = [f.model_server.retry_after_s for f in drill.faults if f.model_server is not None]
    longest = max((a for a in asked if a is not None), default=None)
    seen = sorted({int(r.retry_after) for r in told})
    detail = f"{len(told)} answered 429 with Retry-After during the faults (at least {minimum})"
    ok = len(told) >= minimum and not bare
    if bare:
        detail += f"; {len(bare)} 429s without one"
    if seen:
        detail += f"; Retry-After seen: {', '.join(str(v) for v in seen[:5])} s"
    if longest is not None:
        detail += f" (the servers asked {longest} s)"
        ok = ok and bool(seen) and seen[-1] == longest
    return check("Retry-After reached the client", ok, detail)
