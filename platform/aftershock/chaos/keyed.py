"""Judging keyed requests as a client sees them: each Idempotency-Key is one logical request,
sent again by the client after a cut or a retryable refusal. Goodput is the share of keys that
ended in a success; a key is lost when it ended in anything but a success or a clear retryable
error, or when two of its answers differ (the retry did not return the original result)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from aftershock.chaos.check import Check, check
from aftershock.chaos.record import Record
from aftershock.chaos.sampler import Sample

# Statuses a client is told to retry, with an OpenAI error body: not a lost request.
_CLEAR_RETRYABLE = (429, 503)


@dataclass(frozen=True)
class KeyedFigures:
    keys: int
    succeeded: int
    retried: int  # keys the client sent more than once
    lost: list[str]  # keys that ended badly or got two different answers
    generations: float  # dedupe claims and takeovers: generations started under a key

    @property
    def goodput(self) -> float:
        return self.succeeded / self.keys if self.keys else 0.0


def keyed_figures(records: Sequence[Record], samples: Sequence[Sample]) -> KeyedFigures:
    tries: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.idempotency_key:
            tries[r.idempotency_key].append(r)
    lost, succeeded = [], 0
    for key, rs in tries.items():
        rs.sort(key=lambda r: r.client_attempt)
        texts = {r.text for r in rs if r.ok}
        last = rs[-1]
        if last.ok:
            succeeded += 1
        if len(texts) > 1 or not (last.ok or (last.status in _CLEAR_RETRYABLE and last.error)):
            lost.append(key)
    generations = 0.0
    if samples:
        first, end = samples[0].dedupe, samples[-1].dedupe
        generations = sum(end.get(k, 0.0) - first.get(k, 0.0) for k in ("claimed", "taken_over"))
    retried = sum(1 for rs in tries.values() if len(rs) > 1)
    return KeyedFigures(len(tries), succeeded, retried, lost, generations)


def keyed_checks(
    min_goodput: float | None, max_lost: int | None, records: Sequence[Record], samples: Sequence[Sample]
) -> list[Check]:
    f = keyed_figures(records, samples)
    checks = []
    if min_goodput is not None:
        checks.append(
            check(
                "goodput of keyed requests",
                f.keys > 0 and f.goodput >= min_goodput,
                f"{f.goodput:.3%} of {f.keys} keys succeeded, {f.retried} after a client retry "
                f"(at least {min_goodput:.1%})",
            )
        )
    if max_lost is not None:
        named = f": {', '.join(f.lost[:5])}" if f.lost else ""
        checks.append(
            check(
                "no accepted request lost",
                len(f.lost) <= max_lost,
                f"{len(f.lost)} keys lost (at most {max_lost}){named}; {f.generations:.0f} generations "
                f"claimed under {f.keys} keys (dedupe counters)",
            )
        )
    return checks
