"""The drills' Locust users, on their own:

    .venv/bin/locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000 --headless -u 8 -r 8 -t 30s

REST (`CompletionUser`) and SSE (`StreamingUser`) clients of the edge; each records client-side
latency and time to first token, printed as percentiles when Locust stops. Settings come from
the environment: AFTERSHOCK_LOAD_MODEL (sim-small), AFTERSHOCK_LOAD_MAX_TOKENS (16),
AFTERSHOCK_LOAD_STREAM_SHARE (0.5), AFTERSHOCK_LOAD_API_KEY, AFTERSHOCK_LOAD_IDEMPOTENCY_SHARE (0).
"""

from __future__ import annotations

import os
from typing import Any

from aftershock.chaos.users import CompletionUser, EdgeUser, LoadSettings, StreamingUser
from locust import events

EdgeUser.settings = LoadSettings(
    model=os.environ.get("AFTERSHOCK_LOAD_MODEL", "sim-small"),
    max_tokens=int(os.environ.get("AFTERSHOCK_LOAD_MAX_TOKENS", "16")),
    api_key=os.environ.get("AFTERSHOCK_LOAD_API_KEY") or None,
    idempotency_share=float(os.environ.get("AFTERSHOCK_LOAD_IDEMPOTENCY_SHARE", "0")),
)
_share = float(os.environ.get("AFTERSHOCK_LOAD_STREAM_SHARE", "0.5"))
StreamingUser.weight = max(0, round(_share * 100))
CompletionUser.weight = max(0, 100 - StreamingUser.weight)

__all__ = ["CompletionUser", "StreamingUser"]


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))] if s else float("nan")


@events.quitting.add_listener
def _summary(environment: Any, **_: Any) -> None:
    records = EdgeUser.recorder.snapshot()
    for stream in (False, True):
        ok = [r for r in records if r.ok and r.stream == stream]
        ttft = [r.ttft_s * 1000 for r in ok if r.ttft_s is not None]
        lat = [r.latency_s * 1000 for r in ok]
        kind = "sse " if stream else "json"
        print(
            f"{kind}: {len(ok)} ok / {sum(1 for r in records if r.stream == stream)}  "
            f"TTFT p50 {_pct(ttft, 50):.1f} p95 {_pct(ttft, 95):.1f} p99 {_pct(ttft, 99):.1f} ms  "
            f"latency p50 {_pct(lat, 50):.1f} p99 {_pct(lat, 99):.1f} ms"
        )
