"""One try on one inference replica: traced, counted, and bounded by the per-try and idle timeouts.

Also what a failed try means: whether it counts against the replica's breaker, its gRPC code, and
the domain error the caller sees when it is not retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from aftershock import errors
from aftershock.backend.replicas import Replica
from aftershock.backend.retry import RetryConfig
from aftershock.backend.stall import StallWatch
from aftershock.metrics import BackendMetrics
from aftershock.rpc.client import end_call
from aftershock.rpc.status import error_from_rpc
from aftershock.rpc.tracing import end_span, start_client_span
from aftershock.v1 import generation_pb2 as pb

INFERENCE_GENERATE = "/aftershock.v1.Inference/Generate"
INFERENCE_COMPLETE = "/aftershock.v1.Inference/Complete"


class TryTimeout(Exception):
    """A try produced no first message within the per-try timeout, or stalled mid-stream."""

    def __init__(
        self, message: str = "The replica did not start answering within the per-try timeout."
    ) -> None:
        super().__init__(message)
        self.message = message


# Failures that say something about the replica. A DEADLINE_EXCEEDED from the call itself is the
# caller's overall deadline (not the replica's fault); a per-try timeout is.
REPLICA_FAILURES = frozenset(
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
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in REPLICA_FAILURES


# Failures whose Retry-After is about the replica (it is overloaded or unavailable for that long).
HOLDS_FOR_RETRY_AFTER = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})


def hold_replica(replica: Replica, exc: grpc.aio.AioRpcError, metrics: BackendMetrics) -> None:
    """Keep the replica out of routing for as long as its model server explicitly asked (errors.HOLD_KEY;
    nothing when it did not say: a default Retry-After hint, or an engine's own queue refusing one
    request, must not park a replica); a failed request's effect on the breaker is the breaker's own."""
    if exc.code() not in HOLDS_FOR_RETRY_AFTER:
        return
    wait = error_from_rpc(exc).hold_s
    if wait is not None and wait > 0:
        replica.hold_off(wait)
        metrics.replica_retry_after_total.labels(replica.name, exc.code().name).inc()


def code_of(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    if isinstance(exc, TryTimeout):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, errors.AftershockError):
        return exc.code
    return grpc.StatusCode.UNKNOWN


def final_error(exc: BaseException) -> errors.AftershockError:
    """The error the caller sees for a failed try that is not retried."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return error_from_rpc(exc)
    if isinstance(exc, TryTimeout):
        return errors.DeadlineExceeded(exc.message)
    assert isinstance(exc, errors.AftershockError)
    return exc


async def attempt(
    replica: Replica,
    request: pb.GenerateRequest,
    remaining: float | None,
    retry: RetryConfig,
    metrics: BackendMetrics,
) -> AsyncIterator[pb.GenerateResponse]:
    """One try on one replica, traced as a CLIENT span and counted by outcome.

    A non-streamed request is one unary Complete call (one batch of operations each way instead of
    a stream's several); it still yields its one message, so the relay treats both alike.
    """
    unary = not request.stream
    span, metadata = start_client_span(INFERENCE_COMPLETE if unary else INFERENCE_GENERATE, replica.address)
    span.set_attribute("aftershock.replica", replica.name)
    call: (
        grpc.aio.UnaryUnaryCall[pb.GenerateRequest, pb.GenerateResponse]
        | grpc.aio.UnaryStreamCall[pb.GenerateRequest, pb.GenerateResponse]
    )
    if unary:
        call = replica.stub.Complete(request, timeout=remaining, metadata=metadata)
    else:
        call = replica.stub.Generate(request, timeout=remaining, metadata=metadata)
    replica.in_flight += 1
    code = "OK"
    complete = False  # the last message came: the call ends by itself, nothing to cancel
    first_within = retry.per_try_timeout_s if remaining is None else min(retry.per_try_timeout_s, remaining)
    try:
        if isinstance(call, grpc.aio.UnaryUnaryCall):
            try:
                async with asyncio.timeout(first_within):
                    whole = await call
            except TimeoutError:
                raise TryTimeout() from None
            complete = True
            yield whole
            return
        messages = call.__aiter__()
        try:
            async with asyncio.timeout(first_within):
                first = await messages.__anext__()
        except TimeoutError:
            raise TryTimeout() from None
        complete = bool(first.finish_reason)
        yield first
        idle = retry.stream_idle_timeout_s
        watch = StallWatch(idle)
        try:
            while True:
                try:
                    msg = await watch.next(messages)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise TryTimeout(f"The replica stalled mid-stream: no message for {idle:g} s.") from None
                complete = bool(msg.finish_reason)
                yield msg
        finally:
            watch.close()
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
        hold_replica(replica, exc, metrics)
        raise
    except TryTimeout:
        code = "DEADLINE_EXCEEDED"
        raise
    except BaseException:
        code = "CANCELLED"
        raise
    finally:
        replica.in_flight -= 1
        end_call(call, complete=complete, code=code)
        metrics.upstream_requests_total.labels(replica.name, code).inc()
        end_span(span, code)
