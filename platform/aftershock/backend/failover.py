"""Retries and failover around single tries: the relay the servicer serves.

Only retryable codes are retried, with exponential backoff and full jitter, inside the caller's
deadline and under a retry budget, preferring a replica not tried yet. Before the first token any
retryable failure is retried; after it, the stream is resumed on another replica (skipping the text
already delivered, so the caller sees one seamless stream) only when the request is deterministic
(seeded or greedy) AND the replica declared its output reproducible. Otherwise the stream ends with
the error, which the edge sends as an SSE error event.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import grpc
from opentelemetry import trace

from aftershock import errors
from aftershock.backend.attempt import TryTimeout, attempt, code_of, final_error
from aftershock.backend.hedging import Hedging
from aftershock.backend.registry import HedgeRoute
from aftershock.backend.replicas import Replica
from aftershock.backend.resume import ResumeCursor, is_deterministic
from aftershock.backend.retry import RETRYABLE, RetryBudget, RetryConfig, backoff_s
from aftershock.backend.router import Router
from aftershock.clock import Clock
from aftershock.errors import CONTEXT_LENGTH_EXCEEDED
from aftershock.metrics import BackendMetrics
from aftershock.rpc.deadline import remaining_s
from aftershock.v1 import generation_pb2 as pb

log = logging.getLogger(__name__)


class NotReproducible(errors.Unavailable):
    """A resumed stream came from a replica that does not declare its output reproducible."""


class Failover:
    def __init__(
        self,
        router: Router,
        metrics: BackendMetrics,
        retry: RetryConfig,
        clock: Clock,
        rng: random.Random,
        hedge: HedgeRoute | None = None,
    ) -> None:
        self._router = router
        self._metrics = metrics
        self._retry = retry
        self._budget = RetryBudget(retry, clock)
        self._clock = clock
        self._rng = rng
        self._hedging = Hedging(router, metrics, self._budget, hedge, clock)

    async def relay(
        self, request: pb.GenerateRequest, deadline: float | None
    ) -> AsyncGenerator[pb.GenerateResponse, None]:
        model = request.model
        self._router.replicas_of(model)  # NOT_FOUND for an unknown model
        self._budget.record_request()
        span = trace.get_current_span()
        tried: set[str] = set()
        too_small: set[str] = set()  # models whose context the prompt exceeds
        key, session = self._router.affinity(request)
        cursor = ResumeCursor()
        counted = 0  # completion tokens counted in metrics
        attempt_no = 0
        resumed = False  # a retry after text was already relayed
        while True:
            route = self._router.route(model, exclude=tried, key=key, session=session, skip_models=too_small)
            replica = route.replica
            tried.add(replica.name)
            self._metrics.routing_decisions_total.labels(model, route.reason).inc()
            remaining = remaining_s(deadline)
            if remaining is not None and remaining <= 0:
                raise errors.DeadlineExceeded("The request's deadline passed before it reached a replica.")
            downstream = request
            if route.model != model:
                downstream = pb.GenerateRequest()
                downstream.CopyFrom(request)
                downstream.model = route.model
            out_tokens = self._metrics.output_tokens_total.labels("backend", route.model)
            cursor.restart()
            try:
                stream = self._try(replica, downstream, remaining)
                if attempt_no == 0:
                    stream, replica = await self._hedging.race(
                        stream, replica, route, downstream, self._try_of(remaining), tried
                    )
                async for raw in stream:
                    if resumed and not raw.reproducible:
                        self._refuse(model, replica.name, "not_reproducible")
                        raise NotReproducible(
                            "The stream broke and the replica it would resume on does not "
                            "reproduce its output.",
                            retry_after_s=1.0,
                        )
                    msg = cursor.admit(raw)
                    if msg is None:
                        continue
                    if msg.completion_tokens > counted:
                        out_tokens.inc(msg.completion_tokens - counted)
                        counted = msg.completion_tokens
                    msg.replica = replica.name
                    msg.attempts = attempt_no + 1
                    if route.model != model:
                        msg.model = route.model
                    if msg.finish_reason and resumed:
                        # Counted before the last yield: the caller may close us right after it.
                        self._metrics.failovers_total.labels(model, "mid_stream", "resumed").inc()
                    yield msg
                return
            except NotReproducible:
                raise
            except (grpc.aio.AioRpcError, TryTimeout, errors.Unavailable) as exc:
                code = code_of(exc)
                final = final_error(exc)
                if final.error_type == CONTEXT_LENGTH_EXCEEDED and cursor.delivered == 0:
                    # Not a failure: a model later in the fallback chain may have the context.
                    too_small.add(route.model)
                    if self._router.has_fallback(model, too_small):
                        span.add_event("fallback.context", {"model": route.model})
                        continue
                    raise final from None
                time_left = deadline is None or (remaining_s(deadline) or 0.0) > 0
                if code not in RETRYABLE or not time_left or attempt_no + 1 >= self._retry.max_attempts:
                    raise final from None
                delivered = cursor.delivered
                if not cursor.may_resume(request):
                    # Another replica would (or might) generate different text: the caller gets an error.
                    reason = "not_reproducible" if is_deterministic(request) else "not_deterministic"
                    self._refuse(model, replica.name, reason)
                    raise final from None
                if not self._budget.try_acquire():
                    self._metrics.retry_budget_exhausted_total.labels(model).inc()
                    span.add_event("retry.budget_exhausted", {"code": code.name})
                    raise final from None
                attempt_no += 1
                resumed = resumed or delivered > 0
                phase = "mid_stream" if delivered else "before_first_token"
                self._metrics.retries_total.labels(model, code.name).inc()
                self._metrics.failovers_total.labels(model, phase, "attempted").inc()
                span.add_event(
                    "retry",
                    {
                        "attempt": attempt_no,
                        "code": code.name,
                        "from_replica": replica.name,
                        "phase": phase,
                        "delivered_chars": delivered,
                    },
                )
                log.warning(
                    "try failed, retrying",
                    extra={"replica": replica.name, "code": code.name, "attempt": attempt_no, "phase": phase},
                )
                pause = backoff_s(attempt_no - 1, self._retry, self._rng)
                if deadline is not None:
                    pause = min(pause, max(0.0, remaining_s(deadline) or 0.0))
                if pause > 0:
                    await self._clock.sleep(pause)

    def _try_of(
        self, remaining: float | None
    ) -> Callable[[Replica, pb.GenerateRequest], AsyncIterator[pb.GenerateResponse]]:
        return lambda replica, request: self._try(replica, request, remaining)

    async def _try(
        self, replica: Replica, request: pb.GenerateRequest, remaining: float | None
    ) -> AsyncIterator[pb.GenerateResponse]:
        """One try under its replica's breaker."""
        with replica.breaker.calling():
            async for msg in attempt(replica, request, remaining, self._retry, self._metrics):
                yield msg

    def _refuse(self, model: str, replica: str, reason: str) -> None:
        self._metrics.failovers_total.labels(model, "mid_stream", reason).inc()
        trace.get_current_span().add_event(
            "failover.refused", {"replica": replica, "reason": reason.replace("_", " ")}
        )
