"""When a drill stops its load early: the system is clearly in trouble, so more load would only
hurt it (rollbacks still run, and the drill fails on its `no abort condition met` check)."""

from __future__ import annotations

from collections.abc import Sequence

from aftershock.chaos.record import Record
from aftershock.chaos.spec import Abort


def abort_reason(abort: Abort, records: Sequence[Record], now: float) -> str | None:
    """Why to stop at `now` (seconds into the load), or None: the error rate of the requests
    started in the last window, once there are at least `abort.min_requests` of them."""
    window = [r for r in records if r.started >= now - abort.window_s]
    if len(window) < abort.min_requests:
        return None
    errors = 1 - sum(r.ok for r in window) / len(window)
    if errors > abort.max_error_rate:
        return f"error rate {errors:.0%} over the last {abort.window_s:.0f}s at {now:.1f}s"
    return None
