"""The one place where domain errors become gRPC status, and where each hop counts its requests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Container
from typing import Any

import grpc

from aftershock import errors
from aftershock.metrics import UNKNOWN_MODEL, HopMetrics

log = logging.getLogger(__name__)


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], err: errors.AftershockError) -> None:
    await context.abort(err.code, err.message, err.trailing_metadata())


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Maps AftershockError (and anything unexpected) to gRPC status and records RED metrics.

    Only methods whose request has a `model` field are measured; health and ListModels are not.
    """

    def __init__(self, metrics: HopMetrics, known_models: Callable[[], Container[str]]) -> None:
        self._metrics = metrics
        self._known_models = known_models

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
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap_stream(self, behavior: Any) -> Callable[..., AsyncIterator[Any]]:
        metrics = self._metrics

        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            if not hasattr(request, "model"):
                async for msg in behavior(request, context):
                    yield msg
                return
            start = time.perf_counter()
            model = self._model_label(request)
            code = "OK"
            metrics.in_flight.inc()
            try:
                async for msg in behavior(request, context):
                    yield msg
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
                log.exception("unhandled error in %s", behavior.__qualname__)
                await context.abort(grpc.StatusCode.INTERNAL, "Internal error.")
            finally:
                metrics.in_flight.dec()
                metrics.requests_total.labels(metrics.service, model, code).inc()
                metrics.request_duration_seconds.labels(
                    metrics.service, model, "true" if getattr(request, "stream", False) else "false"
                ).observe(time.perf_counter() - start)

        return wrapper

    def _wrap_unary(self, behavior: Any) -> Callable[..., Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await behavior(request, context)
            except errors.AftershockError as err:
                await abort_with(context, err)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception:
                log.exception("unhandled error in %s", behavior.__qualname__)
                await context.abort(grpc.StatusCode.INTERNAL, "Internal error.")

        return wrapper


def _code_name(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
