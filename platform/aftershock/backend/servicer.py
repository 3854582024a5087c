"""The Backend gRPC service: route each request to a replica and relay its stream.

Deadlines: each downstream try gets the caller's *remaining* time. Cancellation: when the caller
goes, the downstream call is cancelled and the engine aborts. Retries: only retryable codes, with
exponential backoff and full jitter, inside the deadline and under a retry budget, preferring
another replica; each replica has a circuit breaker. Failover: before the first token any
retryable failure is retried; after it, only a deterministic (seeded or greedy) request is resumed
on another replica, skipping the text already delivered, so the caller sees one seamless stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace

from aftershock import errors
from aftershock.backend.dedupe import Dedupe, content_key, fingerprint
from aftershock.backend.registry import ModelRegistry
from aftershock.backend.replicas import Replica, ReplicaPool
from aftershock.backend.resume import is_deterministic, skip_delivered, text_length
from aftershock.backend.retry import RETRYABLE, RetryBudget, RetryConfig, backoff_s
from aftershock.backend.router import Router
from aftershock.clock import SYSTEM_CLOCK, Clock
from aftershock.context import request_id_var
from aftershock.metrics import BackendMetrics
from aftershock.rpc.status import error_from_rpc
from aftershock.rpc.tracing import end_span, start_client_span
from aftershock.tracing import GEN_AI_OPERATION, GEN_AI_REQUEST_MODEL
from aftershock.v1 import backend_pb2_grpc
from aftershock.v1 import generation_pb2 as pb

log = logging.getLogger(__name__)

INFERENCE_GENERATE = "/aftershock.v1.Inference/Generate"


class TryTimeout(Exception):
    """A try produced no first message within the per-try timeout, or stalled mid-stream."""

    def __init__(
        self, message: str = "The replica did not start answering within the per-try timeout."
    ) -> None:
        super().__init__(message)
        self.message = message


# Failures that say something about the replica. A DEADLINE_EXCEEDED from the call itself is the
# caller's overall deadline (not the replica's fault); a per-try timeout is.
_REPLICA_FAILURES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


def is_replica_failure(exc: BaseException) -> bool:
    """What a replica's breaker counts: system failures only, never a bad request or a cancel."""
    if isinstance(exc, TryTimeout):
        return True
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _REPLICA_FAILURES


def _code_of(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    if isinstance(exc, TryTimeout):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, errors.AftershockError):
        return exc.code
    return grpc.StatusCode.UNKNOWN


class BackendServicer(backend_pb2_grpc.BackendServicer):
    def __init__(
        self,
        registry: ModelRegistry,
        pool: ReplicaPool,
        router: Router,
        metrics: BackendMetrics,
        *,
        retry: RetryConfig | None = None,
        max_in_flight: int = 1024,
        dedupe: Dedupe | None = None,
        dedupe_content_hash: bool = False,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        self._registry = registry
        self._pool = pool
        self._router = router
        self._metrics = metrics
        self._retry = retry or RetryConfig()
        self._budget = RetryBudget(self._retry, clock)
        self._clock = clock
        self._rng = rng or random.Random()
        self._max_in_flight = max_in_flight
        self._dedupe = dedupe
        self._dedupe_content_hash = dedupe_content_hash
        self.in_flight = 0

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.GenerateResponse]:
        request_id_var.set(request.request_id)
        if self.in_flight >= self._max_in_flight:
            # Fail fast rather than queue without bound; the edge turns this into 429 + Retry-After.
            self._metrics.shed_requests_total.labels("backend").inc()
            raise errors.ResourceExhausted(
                "The backend is at its in-flight limit.", error_type="overloaded", retry_after_s=1.0
            )
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(
                {
                    GEN_AI_OPERATION: "chat" if request.WhichOneof("input") == "chat" else "text_completion",
                    GEN_AI_REQUEST_MODEL: request.model,
                    "aftershock.request_id": request.request_id,
                }
            )
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        self.in_flight += 1
        try:
            source = self._source(request, deadline)
            async with contextlib.aclosing(source):
                async for msg in source:
                    yield msg
        finally:
            self.in_flight -= 1

    def _source(
        self, request: pb.GenerateRequest, deadline: float | None
    ) -> AsyncGenerator[pb.GenerateResponse, None]:
        """The relay itself, or the relay behind dedupe when the request has a key."""
        key = request.idempotency_key
        if not key and self._dedupe_content_hash and is_deterministic(request):
            key = content_key(request)
        if self._dedupe is None or not key:
            return self.relay(request, deadline)
        self._router.replicas_of(request.model)  # an unknown model is NOT_FOUND, never cached
        return self._dedupe.serve(  # type: ignore[return-value]  # an async generator function
            key,
            fingerprint(request),
            lambda: self.relay(request, deadline),
            stream=request.stream,
            resumable=is_deterministic(request),
        )

    async def relay(
        self, request: pb.GenerateRequest, deadline: float | None
    ) -> AsyncGenerator[pb.GenerateResponse, None]:
        model = request.model
        self._router.replicas_of(model)  # NOT_FOUND for an unknown model
        self._budget.record_request()
        span = trace.get_current_span()
        tried: set[str] = set()
        delivered = 0  # characters relayed to the caller
        counted = 0  # completion tokens counted in metrics
        deterministic = is_deterministic(request)
        out_tokens = self._metrics.output_tokens_total.labels("backend", model)
        attempt = 0
        resumed = False  # a retry after text was already relayed
        while True:
            replica = self._router.pick(model, exclude=tried)
            tried.add(replica.name)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise errors.DeadlineExceeded("The request's deadline passed before it reached a replica.")
            skip = delivered
            try:
                with replica.breaker.calling():
                    async for msg in self._attempt(replica, request, remaining):
                        if skip:
                            kept, skip = skip_delivered(msg, skip)
                            if kept is None:
                                continue
                            msg = kept
                        delivered += text_length(msg)
                        if msg.completion_tokens > counted:
                            out_tokens.inc(msg.completion_tokens - counted)
                            counted = msg.completion_tokens
                        msg.replica = replica.name
                        msg.attempts = attempt + 1
                        if msg.finish_reason and resumed:
                            # Counted before the last yield: the caller may close us right after it.
                            self._metrics.failovers_total.labels(model, "mid_stream", "resumed").inc()
                        yield msg
                return
            except (grpc.aio.AioRpcError, TryTimeout, errors.Unavailable) as exc:
                code = _code_of(exc)
                final = self._final_error(exc)
                time_left = deadline is None or deadline - time.monotonic() > 0
                if code not in RETRYABLE or not time_left or attempt + 1 >= self._retry.max_attempts:
                    raise final from None
                if delivered and not deterministic:
                    # Another replica would generate different text: the caller gets an error event.
                    self._metrics.failovers_total.labels(model, "mid_stream", "not_deterministic").inc()
                    span.add_event(
                        "failover.refused", {"replica": replica.name, "reason": "not deterministic"}
                    )
                    raise final from None
                if not self._budget.try_acquire():
                    self._metrics.retry_budget_exhausted_total.labels(model).inc()
                    span.add_event("retry.budget_exhausted", {"code": code.name})
                    raise final from None
                attempt += 1
                resumed = resumed or delivered > 0
                phase = "mid_stream" if delivered else "before_first_token"
                self._metrics.retries_total.labels(model, code.name).inc()
                self._metrics.failovers_total.labels(model, phase, "attempted").inc()
                span.add_event(
                    "retry",
                    {
                        "attempt": attempt,
                        "code": code.name,
                        "from_replica": replica.name,
                        "phase": phase,
                        "delivered_chars": delivered,
                    },
                )
                log.warning(
                    "try failed, retrying",
                    extra={"replica": replica.name, "code": code.name, "attempt": attempt, "phase": phase},
                )
                pause = backoff_s(attempt - 1, self._retry, self._rng)
                if deadline is not None:
                    pause = min(pause, max(0.0, deadline - time.monotonic()))
                if pause > 0:
                    await self._clock.sleep(pause)

    @staticmethod
    def _final_error(exc: BaseException) -> errors.AftershockError:
        if isinstance(exc, grpc.aio.AioRpcError):
            return error_from_rpc(exc)
        if isinstance(exc, TryTimeout):
            return errors.DeadlineExceeded(exc.message)
        assert isinstance(exc, errors.AftershockError)
        return exc

    async def _attempt(
        self, replica: Replica, request: pb.GenerateRequest, remaining: float | None
    ) -> AsyncIterator[pb.GenerateResponse]:
        """One try on one replica, traced as a CLIENT span and counted by outcome."""
        span, metadata = start_client_span(INFERENCE_GENERATE, replica.address)
        span.set_attribute("aftershock.replica", replica.name)
        call = replica.stub.Generate(request, timeout=remaining, metadata=metadata)
        replica.in_flight += 1
        code = "OK"
        first_within = (
            self._retry.per_try_timeout_s
            if remaining is None
            else min(self._retry.per_try_timeout_s, remaining)
        )
        try:
            messages = call.__aiter__()
            try:
                async with asyncio.timeout(first_within):
                    first = await messages.__anext__()
            except TimeoutError:
                raise TryTimeout() from None
            yield first
            idle = self._retry.stream_idle_timeout_s
            while True:
                try:
                    async with asyncio.timeout(idle):
                        msg = await messages.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise TryTimeout(f"The replica stalled mid-stream: no message for {idle:g} s.") from None
                yield msg
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                replica.mark_unhealthy()
            raise
        except TryTimeout:
            code = "DEADLINE_EXCEEDED"
            raise
        except BaseException:
            code = "CANCELLED"
            raise
        finally:
            replica.in_flight -= 1
            call.cancel()
            self._metrics.upstream_requests_total.labels(replica.name, code).inc()
            end_span(span, code)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        out = []
        for route in self._registry.config.models:
            replicas = [r for n in route.replicas if (r := self._pool.get(n)) is not None]
            ready = [r for r in replicas if r.healthy]
            info = pb.ModelInfo(
                name=route.name, total_replicas=len(route.replicas), ready_replicas=len(ready)
            )
            learned = next((r.models[route.name] for r in ready if route.name in r.models), None)
            if learned is not None:
                info.max_model_len = learned.max_model_len
                info.max_output_tokens = learned.max_output_tokens
                info.engine = learned.engine
            out.append(info)
        return pb.ListModelsResponse(models=out)
