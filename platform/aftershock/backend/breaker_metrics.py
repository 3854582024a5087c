"""Breaker state as backend metrics: a BreakerListener over aftershock_breaker_* series."""

from __future__ import annotations

from aftershock.breaker import CLOSED, HALF_OPEN, OPEN
from aftershock.metrics import BackendMetrics

STATE_VALUE = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}


class BreakerMetrics:
    def __init__(self, metrics: BackendMetrics) -> None:
        self._metrics = metrics

    def state_changed(self, target: str, state: str, *, changed: bool) -> None:
        self._metrics.breaker_state.labels(target).set(STATE_VALUE[state])
        if changed:
            self._metrics.breaker_transitions_total.labels(target, state).inc()

    def forgotten(self, target: str) -> None:
        self._metrics.breaker_state.remove(target)
