"""Retry policy: which failures are retried, how long to wait, and a budget so an outage is never
amplified into a retry storm."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import grpc

from aftershock.clock import Clock


@dataclass(frozen=True)
class RetryConfig:
    max_attempts: int = 3
    backoff_base_s: float = 0.025
    backoff_cap_s: float = 1.0
    # A try that has not produced its first message in this long is given up and retried.
    per_try_timeout_s: float = 10.0
    # A stream that goes this long without a message mid-way is given up (a stalled link) and,
    # when deterministic, resumed elsewhere.
    stream_idle_timeout_s: float = 10.0
    # Retries may be at most this fraction of the requests seen in the window...
    budget_ratio: float = 0.2
    # ...plus this many per second, so a quiet service can still retry.
    budget_min_per_s: float = 5.0
    budget_window_s: float = 10.0


# A single try failing with these may succeed elsewhere or later; anything else is final.
RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
)


class RetryBudget:
    """Counts requests and retries over a sliding window; a retry is allowed while
    retries < ratio x requests + min_per_s x window."""

    def __init__(self, config: RetryConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _trim(self, now: float) -> None:
        horizon = now - self._config.budget_window_s
        for q in (self._requests, self._retries):
            while q and q[0] < horizon:
                q.popleft()

    def record_request(self) -> None:
        now = self._clock.now()
        self._trim(now)
        self._requests.append(now)

    def try_acquire(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        now = self._clock.now()
        self._trim(now)
        cfg = self._config
        allowed = cfg.budget_ratio * len(self._requests) + cfg.budget_min_per_s * cfg.budget_window_s
        if len(self._retries) >= allowed:
            return False
        self._retries.append(now)
        return True


def backoff_s(attempt: int, config: RetryConfig, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base x 2^attempt))."""
    return rng.uniform(0.0, min(config.backoff_cap_s, config.backoff_base_s * (2**attempt)))
