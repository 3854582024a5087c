"""Hedged first tokens in the relay: when and where a hedge starts, and what it is counted as.

Off unless the model's registry route enables it, and only for streamed requests (a non-streamed
request's first message is its whole answer). The threshold is the route's fixed `after_s` or a high
quantile of the model's recent first-message times. A hedge needs another replica that may take the
request and a retry-budget token: hedges and retries share one budget.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Collection

from opentelemetry import trace

from aftershock.backend.hedge import FirstMessageTimes, HedgeConfig, first_message, threshold
from aftershock.backend.registry import HedgeRoute
from aftershock.backend.replicas import Replica
from aftershock.backend.retry import RetryBudget
from aftershock.backend.router import Route, Router
from aftershock.clock import SYSTEM_CLOCK, Clock
from aftershock.metrics import BackendMetrics
from aftershock.v1 import generation_pb2 as pb

Messages = AsyncIterator[pb.GenerateResponse]
StartTry = Callable[[Replica, pb.GenerateRequest], Messages]


def hedge_config(route: HedgeRoute) -> HedgeConfig:
    return HedgeConfig(
        enabled=route.enabled, after_s=route.after_s, quantile=route.quantile, slow_for_s=route.slow_for_s
    )


class Hedging:
    def __init__(
        self,
        router: Router,
        metrics: BackendMetrics,
        budget: RetryBudget,
        default: HedgeRoute | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._clock = clock
        # For models whose registry route says nothing about hedging.
        self._default = default or HedgeRoute()
        self._router = router
        self._metrics = metrics
        self._budget = budget
        self._times: dict[str, FirstMessageTimes] = {}

    def _times_of(self, model: str, config: HedgeConfig) -> FirstMessageTimes:
        times = self._times.get(model)
        if times is None:
            times = self._times[model] = FirstMessageTimes(config.window)
        return times

    async def race(
        self,
        stream: Messages,
        replica: Replica,
        route: Route,
        request: pb.GenerateRequest,
        start_try: StartTry,
        tried: set[str],
    ) -> tuple[Messages, Replica]:
        """The messages of the first try, or of its hedge when that answers first."""
        model_route = self._router.model_route(route.model)
        if not request.stream or model_route is None:
            return stream, replica
        config = hedge_config(model_route.hedge or self._default)
        if not config.enabled:
            return stream, replica
        times = self._times_of(route.model, config)
        after = threshold(config, times)
        replicas = [replica]
        labels = self._metrics.hedges_total

        def start_hedge() -> Messages | None:
            other = self._other(route, request, tried)
            if other is None:
                return None
            if not self._budget.try_acquire():
                labels.labels(route.model, "refused").inc()
                return None
            tried.add(other.name)
            replicas.append(other)
            labels.labels(route.model, "started").inc()
            trace.get_current_span().add_event(
                "hedge.started",
                {"from_replica": replica.name, "to_replica": other.name, "after_s": after or 0.0},
            )
            return start_try(other, request)

        started = time.monotonic()
        won = await first_message(stream, after, start_hedge)
        if not won.hedged:
            times.observe(time.monotonic() - started)
        else:
            labels.labels(route.model, "cancelled").inc()
            if won.index == 1:
                labels.labels(route.model, "won").inc()
                # The first try's replica answered later than another: pass it over for a while,
                # so a replica that has turned slow gets a few hedges, not every request's.
                replica.slow_until = self._clock.now() + config.slow_for_s
            trace.get_current_span().add_event("hedge.decided", {"winner": replicas[won.index].name})
        return _prepend(won.first, won.messages), replicas[won.index]

    def _other(self, route: Route, request: pb.GenerateRequest, tried: Collection[str]) -> Replica | None:
        key, session = self._router.affinity(request)
        try:
            other = self._router.route(route.model, exclude=tried, key=key, session=session).replica
        except Exception:  # no replica may take it: no hedge, the first try goes on
            return None
        return None if other.name in tried else other


async def _prepend(first: pb.GenerateResponse, rest: Messages) -> Messages:
    yield first
    async for msg in rest:
        yield msg
