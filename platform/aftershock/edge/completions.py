"""Serving one completion endpoint: HTTP request in, backend gRPC stream out, JSON or SSE back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Generic

import grpc
from opentelemetry import trace
from starlette.requests import Request
from starlette.responses import Response

from aftershock import errors
from aftershock.context import request_id_var
from aftershock.edge import errors as http_errors
from aftershock.edge import responses
from aftershock.edge.admission import Admission, Pass
from aftershock.edge.backend_client import BackendClient
from aftershock.edge.endpoints import Endpoint, R
from aftershock.edge.exchange import Exchange
from aftershock.edge.requests import (
    idempotency_key_of,
    parse_json_body,
    read_body,
    request_id_of,
    session_id_of,
    timeout_of,
)
from aftershock.edge.settings import EdgeSettings
from aftershock.edge.streaming import open_stream
from aftershock.metrics import UNKNOWN_MODEL, EdgeMetrics
from aftershock.rpc.tracing import outgoing_metadata


class CompletionHandler(Generic[R]):
    """The route handler of one Endpoint (chat completions or completions)."""

    def __init__(
        self,
        endpoint: Endpoint[R],
        settings: EdgeSettings,
        backend: BackendClient,
        metrics: EdgeMetrics,
        admission: Admission,
    ) -> None:
        self._endpoint: Endpoint[R] = endpoint
        self._settings = settings
        self._backend = backend
        self._metrics = metrics
        self._admission = admission

    async def __call__(self, request: Request) -> Response:
        exchange = Exchange(request_id_of(request), time.perf_counter(), trace.get_current_span())
        request_id_var.set(exchange.request_id)
        admitted: Pass | None = None
        streaming = False
        try:
            admitted = self._admission.enter(request.headers)
            body = await read_body(request, self._settings.max_body_bytes)
            parsed = parse_json_body(body, self._endpoint.schema)
            known = parsed.model in self._backend.known_models
            exchange.model = parsed.model if known else UNKNOWN_MODEL
            exchange.stream = parsed.stream
            # The edge names the response; a replay of an earlier one keeps that one's name (below).
            completion_id = self._endpoint.shape.id_prefix + exchange.request_id
            created = int(time.time())
            exchange.describe(parsed, self._endpoint.shape.operation, completion_id)
            await admitted.charge(parsed.model, parsed.effective_max_tokens())
            exchange.rate_headers = admitted.rate_headers
            settings = self._settings
            timeout = timeout_of(request, settings.default_timeout_s, settings.max_timeout_s)
            grpc_request = self._endpoint.to_grpc(parsed, exchange.request_id, completion_id, created)
            key = idempotency_key_of(request)
            # Scoped to the caller: two clients' keys never meet (nor share a result).
            grpc_request.idempotency_key = f"{admitted.key.name}:{key}" if key else ""
            # Scoped like the key: two clients' sessions never share a replica preference by accident.
            session = session_id_of(request)
            grpc_request.session_id = f"{admitted.key.name}:{session}" if session else ""
            # No CLIENT span: the edge's SERVER span already covers this one call, and a span costs
            # ~100 µs of CPU to make and export here; the backend's SERVER span is its child.
            metadata = outgoing_metadata()
            if parsed.stream:
                rpc = self._backend.stub.Generate(grpc_request, timeout=timeout, metadata=metadata)
                response = await open_stream(
                    rpc,
                    self._endpoint.shape,
                    exchange,
                    self._metrics,
                    completion_id=completion_id,
                    created=created,
                    model=parsed.model,
                    include_usage=bool(parsed.stream_options and parsed.stream_options.include_usage),
                    release=admitted.release,
                )
                streaming = True
                return response
            # A non-streamed request is one unary call: one batch of gRPC operations, not a stream's.
            call = self._backend.stub.Complete(grpc_request, timeout=timeout, metadata=metadata)
            # A non-streamed handler is not cancelled when its client leaves: watch for it ourselves.
            watcher = asyncio.ensure_future(_disconnected(request))
            watcher.add_done_callback(lambda _: call.cancel())
            try:
                return await self._complete(call, exchange, completion_id, created, parsed.model)
            finally:
                watcher.cancel()
        except (errors.AftershockError, grpc.aio.AioRpcError) as exc:
            return self._refuse(http_errors.from_error(exc, exchange.request_id), exchange, admitted)
        finally:
            if admitted is not None and not streaming:
                admitted.release()

    async def _complete(
        self, call: Any, exchange: Exchange, completion_id: str, created: int, model: str
    ) -> Response:
        whole = await call
        if not whole.finish_reason:
            raise errors.Internal("The backend answered without a result.")
        first = last = whole
        tokens = whole.tokens
        exchange.attempts = last.attempts
        completion_id, created, model = responses.served_as(first, completion_id, created, model)
        exchange.served_model = first.model
        exchange.answered_as(completion_id, model)
        finish = responses.finish_reason(last.finish_reason)
        body = responses.body(
            self._endpoint.shape,
            completion_id=completion_id,
            created=created,
            model=model,
            text="".join(tokens),
            finish=finish,
            prompt_tokens=last.prompt_tokens,
            completion_tokens=last.completion_tokens,
        )
        elapsed = time.perf_counter() - exchange.started
        self._metrics.time_to_first_token_seconds.labels(exchange.model).observe(elapsed, exchange.exemplar())
        self._metrics.output_tokens_total.labels("edge", exchange.model).inc(last.completion_tokens)
        exchange.usage(last.prompt_tokens, last.completion_tokens, finish)
        exchange.finish(self._metrics, "OK", 200)
        return Response(body, media_type="application/json", headers=exchange.headers())

    def _refuse(self, err: http_errors.HttpError, exchange: Exchange, admitted: Pass | None) -> Response:
        if admitted is not None:
            exchange.rate_headers = admitted.rate_headers  # a 429 carries the x-ratelimit-* headers too
        exchange.finish(self._metrics, err.grpc_code, err.status)
        return err.response(exchange.headers())


async def _disconnected(request: Request) -> None:
    with contextlib.suppress(Exception):
        while (await request.receive())["type"] != "http.disconnect":
            pass
