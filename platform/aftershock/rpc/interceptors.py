"""The one place where domain errors become gRPC status, where each hop counts its requests and
where each handled call gets its SERVER span (trace context from the caller's metadata)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Container
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from aftershock import errors
from aftershock.metrics import UNKNOWN_MODEL, HopMetrics
from aftershock.rpc.tracing import end_span, start_server_span
from aftershock.tracing import trace_id_of

log = logging.getLogger(__name__)

# Control-plane calls: the backend's load polls (several a second per replica) and readiness probes.
# They get a span only as part of a sampled trace (a user's GET /v1/models), never a trace of their own.
_TRACED_ONLY_IN_A_TRACE = frozenset({"GetLoad", "ListModels"})


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], err: errors.AftershockError) -> None:
    await context.abort(err.code, err.message, err.trailing_metadata())


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Maps AftershockError (and anything unexpected) to gRPC status and records RED metrics.

    Only aftershock.v1 methods are wrapped (health is not); RED metrics are recorded for the streaming
    Generate calls and the unary Complete calls, whose requests carry the model.
    """

    def __init__(self, metrics: HopMetrics, known_models: Callable[[], Container[str]]) -> None:
        self._metrics = metrics
        self._known_models = known_models
        # Generate and Complete calls in progress, for graceful shutdown.
        self.active = 0

    def _model_label(self, request: Any) -> str:
        model = getattr(request, "model", "")
        return model if model in self._known_models() else UNKNOWN_MODEL

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith("/aftershock."):
            return handler
        method = handler_call_details.method
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _count(self, request: Any, model: str, code: str, start: float, span: Any, stream: bool) -> None:
        metrics = self._metrics
        metrics.requests_total.labels(metrics.service, model, code).inc()
        trace_id = trace_id_of(span)
        metrics.request_duration_seconds.labels(
            metrics.service, model, "true" if stream else "false"
        ).observe(time.perf_counter() - start, {"trace_id": trace_id} if trace_id else None)

    def _wrap_stream(self, behavior: Any, method: str) -> Callable[..., AsyncIterator[Any]]:
        metrics = self._metrics

        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            start = time.perf_counter()
            model = self._model_label(request)
            code = "OK"
            metrics.in_flight.inc()
            self.active += 1
            span = start_server_span(method, context.invocation_metadata())
            current = trace.set_span_in_context(span)  # built once, attached for each step
            messages = behavior(request, context)
            try:
                while True:
                    # The span is current while the handler runs, never across a yield: a stream
                    # its caller abandons leaves this generator suspended at the yield, and the
                    # event loop's finalizer closes it later from another context, where a context
                    # attached here cannot be detached ("Failed to detach context"). By hand, not
                    # trace.use_span: that costs ~2 µs more per message (a generator-based context
                    # manager and a new context each time); what it adds is recorded below.
                    token = otel_context.attach(current)
                    try:
                        msg = await anext(messages, None)  # no StopAsyncIteration to record
                    except Exception as exc:
                        _record_exception(span, exc)
                        raise
                    finally:
                        otel_context.detach(token)
                    if msg is None:
                        break
                    yield msg
            except errors.AftershockError as err:
                code = err.code.name
                await abort_with(context, err)
            except (asyncio.CancelledError, GeneratorExit):
                # GeneratorExit: the call ended while this generator waited at a yield (gRPC was
                # sending what it yielded), so the finalizer closes it; cancelled as much as a
                # CancelledError at an await is, and never a success.
                code = "CANCELLED"
                raise
            except grpc.aio.AbortError:
                code = _code_name(context)
                raise
            except Exception:
                code = "INTERNAL"
                with trace.use_span(span, end_on_exit=False):  # the log line (and Sentry) get the trace id
                    log.exception("unhandled error in %s", behavior.__qualname__)
                await context.abort(grpc.StatusCode.INTERNAL, "Internal error.")
            finally:
                # Closed now, not whenever the collector gets to it: the handler's own cleanup
                # (cancelling its call to the next hop) is due when the stream ends.
                with trace.use_span(span, end_on_exit=False):
                    await messages.aclose()
                metrics.in_flight.dec()
                self.active -= 1
                self._count(request, model, code, start, span, bool(getattr(request, "stream", False)))
                end_span(span, code)

        return wrapper

    def _wrap_unary(self, behavior: Any, method: str) -> Callable[..., Awaitable[Any]]:
        # Complete is a non-streamed Generate as one unary call: counted (RED, in-flight, drain) alike.
        counted = method.endswith("/Complete")
        root = method.rpartition("/")[2] not in _TRACED_ONLY_IN_A_TRACE
        metrics = self._metrics

        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            start = time.perf_counter()
            span = start_server_span(method, context.invocation_metadata(), root=root)
            code = "OK"
            if counted:
                metrics.in_flight.inc()
                self.active += 1
            try:
                with trace.use_span(span, end_on_exit=False):
                    return await behavior(request, context)
            except errors.AftershockError as err:
                code = err.code.name
                await abort_with(context, err)
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except grpc.aio.AbortError:
                code = _code_name(context)
                raise
            except Exception:
                code = "INTERNAL"
                with trace.use_span(span, end_on_exit=False):
                    log.exception("unhandled error in %s", behavior.__qualname__)
                await context.abort(grpc.StatusCode.INTERNAL, "Internal error.")
            finally:
                if counted:
                    metrics.in_flight.dec()
                    self.active -= 1
                    self._count(request, self._model_label(request), code, start, span, False)
                end_span(span, code)

        return wrapper


def _record_exception(span: Span, exc: Exception) -> None:
    """What trace.use_span records when its block raises: the exception as an event, ERROR status."""
    if span.is_recording():
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def _code_name(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
