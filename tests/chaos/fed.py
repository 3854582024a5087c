"""Fed records and metric samples for judging drills without running them: what clients and the
backend would have reported, shaped per test."""

from __future__ import annotations

from collections.abc import Callable

from aftershock.chaos.record import Record
from aftershock.chaos.sampler import RESUMED_FAILOVERS, Sample
from aftershock.chaos.spec import Drill

STEP_S = 0.05  # one request every 50 ms


def records(drill: Drill, failing: Callable[[float], bool] = lambda t: False) -> list[Record]:
    """A steady load over the whole drill; requests started at t fail where failing(t)."""
    out = []
    n = int(drill.load.duration_s / STEP_S)
    for i in range(n):
        t = i * STEP_S
        ok = not failing(t)
        out.append(
            Record(
                started=t,
                latency_s=0.2,
                ttft_s=0.05 if ok else None,
                ok=ok,
                status=200 if ok else 503,
                stream=i % 2 == 0,
                error="" if ok else "replica_unavailable",
                trace_id=f"{i:032x}",
            )
        )
    return out


def healthy_samples(drill: Drill) -> list[Sample]:
    """Backend samples every 0.5 s in which everything a drill can expect happened: its breakers
    opened during the fault and closed 1 s after, retries and resumed streams rose, dedupe worked
    before and after, every replica was healthy outside the fault."""
    out = []
    opened = drill.expect.breaker_opened
    t, i = 0.0, 0
    while t <= drill.load.duration_s:
        in_fault = drill.fault_start_s + 0.5 <= t < drill.fault_end_s + 1.0
        out.append(
            Sample(
                t=t,
                breakers={target: 1 if in_fault else 0 for target in (*opened, "inference:inference-1")},
                counters={
                    "aftershock_retries_total": float(i),
                    RESUMED_FAILOVERS: float(i),
                    "aftershock_failovers_total": float(i),
                    "aftershock_upstream_requests_total": float(i * 10),
                    "aftershock_retry_budget_exhausted_total": 0.0,
                },
                dedupe={"claimed": float(i), "replayed": float(i), "bypassed": 0.0},
                replicas={"inference-0": 0 if in_fault else 1, "inference-1": 1},
            )
        )
        t += 0.5
        i += 1
    return out
