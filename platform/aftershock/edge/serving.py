"""Serving chat and text completions: HTTP request in, backend gRPC stream out, JSON or SSE back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from opentelemetry import trace
from opentelemetry.trace import Span
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from aftershock import errors
from aftershock.context import request_id_var
from aftershock.edge import errors as http_errors
from aftershock.edge import sse
from aftershock.edge.auth import Authenticator
from aftershock.edge.backend_client import BackendClient
from aftershock.edge.ratelimit import RateLimiter, RateLimitExceeded
from aftershock.edge.requests import (
    idempotency_key_of,
    parse_json_body,
    read_body,
    request_id_of,
    timeout_of,
)
from aftershock.edge.schema import ChatCompletionRequest, CompletionRequest
from aftershock.edge.settings import EdgeSettings
from aftershock.metrics import UNKNOWN_MODEL, EdgeMetrics
from aftershock.rpc.tracing import end_span, start_client_span
from aftershock.tracing import (
    GEN_AI_FINISH_REASONS,
    GEN_AI_INPUT_TOKENS,
    GEN_AI_OPERATION,
    GEN_AI_OUTPUT_TOKENS,
    GEN_AI_REQUEST_MAX_TOKENS,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_REQUEST_SEED,
    GEN_AI_REQUEST_TEMPERATURE,
    GEN_AI_REQUEST_TOP_P,
    GEN_AI_RESPONSE_ID,
    trace_id_of,
)
from aftershock.v1 import generation_pb2 as pb

log = logging.getLogger(__name__)

BACKEND_GENERATE = "/aftershock.v1.Backend/Generate"
FINISH_REASONS = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length"}
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@dataclass
class _Call:
    """One request's bookkeeping for metrics and the request log."""

    request_id: str
    started: float
    span: Span
    model: str = UNKNOWN_MODEL
    stream: bool = False
    client_span: Span | None = None
    rate_headers: Mapping[str, str] = field(default_factory=dict)
    attempts: int = 0

    def exemplar(self) -> dict[str, str] | None:
        trace_id = trace_id_of(self.span)
        return {"trace_id": trace_id} if trace_id else None

    def usage(self, msg: pb.GenerateResponse, finish: str) -> None:
        self.span.set_attributes(
            {
                GEN_AI_INPUT_TOKENS: msg.prompt_tokens,
                GEN_AI_OUTPUT_TOKENS: msg.completion_tokens,
                GEN_AI_FINISH_REASONS: (finish,),
            }
        )


class Serving:
    def __init__(
        self,
        settings: EdgeSettings,
        backend: BackendClient,
        metrics: EdgeMetrics,
        auth: Authenticator,
        limiter: RateLimiter,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._metrics = metrics
        self._auth = auth
        self._limiter = limiter
        self.in_flight = 0

    # -- entry points -------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        return await self._serve(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, chat=False)

    async def _serve(self, request: Request, *, chat: bool) -> Response:
        call = _Call(request_id_of(request), time.perf_counter(), trace.get_current_span())
        request_id_var.set(call.request_id)
        if self.in_flight >= self._settings.max_in_flight:
            # Refuse in microseconds instead of queueing without bound.
            self._metrics.shed_requests_total.labels("edge").inc()
            err = errors.ResourceExhausted(
                "The edge is at its in-flight limit; retry later.",
                error_type="overloaded",
                retry_after_s=self._settings.shed_retry_after_s,
            )
            return self._error(http_errors.from_domain(err, call.request_id), call, err)
        self._metrics.in_flight.inc()
        self.in_flight += 1
        streaming = False
        try:
            # Authenticate before reading the body: a stranger never gets a large body read.
            api_key = self._auth.authenticate(request.headers)
            body = await read_body(request, self._settings.max_body_bytes)
            parsed: ChatCompletionRequest | CompletionRequest = (
                parse_json_body(body, ChatCompletionRequest)
                if chat
                else parse_json_body(body, CompletionRequest)
            )
            call.model = parsed.model if parsed.model in self._backend.known_models else UNKNOWN_MODEL
            call.stream = parsed.stream
            _describe(call, parsed, chat)
            self._auth.authorize(api_key, parsed.model)
            # Only valid, authorized requests are charged against the key's limits.
            call.rate_headers = (await self._limiter.check(api_key, parsed.effective_max_tokens())).headers
            timeout = timeout_of(request, self._settings.default_timeout_s, self._settings.max_timeout_s)
            grpc_request = _to_grpc(parsed, call.request_id)
            key = idempotency_key_of(request)
            # Scoped to the caller: two clients' keys never meet (nor share a result).
            grpc_request.idempotency_key = f"{api_key.name}:{key}" if key else ""
            call.client_span, metadata = start_client_span(BACKEND_GENERATE, self._settings.backend_target)
            rpc = self._backend.stub.Generate(grpc_request, timeout=timeout, metadata=metadata)
            if parsed.stream:
                response = await self._open_stream(rpc, parsed, call, chat)
                streaming = True
                return response
            # A non-streamed handler is not cancelled when its client leaves: watch for it ourselves.
            watcher = asyncio.ensure_future(_disconnected(request))
            watcher.add_done_callback(lambda _: rpc.cancel())
            try:
                return await self._complete(rpc, parsed, call, chat)
            finally:
                watcher.cancel()
        except errors.AftershockError as err:
            return self._error(http_errors.from_domain(err, call.request_id), call, err)
        except grpc.aio.AioRpcError as exc:
            return self._error(http_errors.from_rpc(exc, call.request_id), call, None)
        finally:
            if not streaming:
                self._metrics.in_flight.dec()
                self.in_flight -= 1

    # -- non-streamed -------------------------------------------------------------------------

    async def _complete(
        self, rpc: Any, parsed: ChatCompletionRequest | CompletionRequest, call: _Call, chat: bool
    ) -> Response:
        tokens: list[str] = []
        last: pb.GenerateResponse | None = None
        async for msg in rpc:
            tokens.extend(msg.tokens)
            last = msg
        if last is None or not last.finish_reason:
            raise errors.Internal("The backend ended the stream without a result.")
        call.attempts = last.attempts
        text = "".join(tokens)
        finish = FINISH_REASONS.get(last.finish_reason, "stop")
        created = int(time.time())
        usage = _usage(last)
        choice: dict[str, Any]
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
            body: dict[str, Any] = {"id": f"chatcmpl-{call.request_id}", "object": "chat.completion"}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            body = {"id": f"cmpl-{call.request_id}", "object": "text_completion"}
        body.update({"created": created, "model": parsed.model, "choices": [choice], "usage": usage})
        elapsed = time.perf_counter() - call.started
        self._metrics.time_to_first_token_seconds.labels(call.model).observe(elapsed, call.exemplar())
        self._metrics.output_tokens_total.labels("edge", call.model).inc(last.completion_tokens)
        call.usage(last, finish)
        self._finish(call, "OK", 200)
        return Response(orjson.dumps(body), media_type="application/json", headers=_headers(call))

    # -- streamed -----------------------------------------------------------------------------

    async def _open_stream(
        self, rpc: Any, parsed: ChatCompletionRequest | CompletionRequest, call: _Call, chat: bool
    ) -> Response:
        """Wait for the first message so that a failure before it is a proper HTTP error status."""
        iterator = rpc.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            raise errors.Internal("The backend ended the stream without a result.") from None
        except BaseException:
            rpc.cancel()
            raise
        call.attempts = first.attempts
        include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
        encoder = sse.ChunkEncoder(
            chat=chat,
            completion_id=("chatcmpl-" if chat else "cmpl-") + call.request_id,
            created=int(time.time()),
            model=parsed.model,
            include_usage=include_usage,
        )
        return StreamingResponse(
            self._events(rpc, iterator, first, encoder, call),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **_headers(call)},
        )

    async def _events(
        self,
        rpc: Any,
        iterator: AsyncIterator[pb.GenerateResponse],
        first: pb.GenerateResponse,
        encoder: sse.ChunkEncoder,
        call: _Call,
    ) -> AsyncIterator[bytes]:
        metrics = self._metrics
        itl = metrics.inter_token_latency_seconds.labels(call.model)
        code = "OK"
        last_at = 0.0
        sent = 0  # completion tokens sent so far
        msg = first
        try:
            head = encoder.role() if encoder.chat else b""
            while True:
                if msg.tokens:
                    now = time.perf_counter()
                    n = max(1, msg.completion_tokens - sent)
                    if sent == 0:
                        ttft = now - call.started
                        metrics.time_to_first_token_seconds.labels(call.model).observe(ttft, call.exemplar())
                    else:
                        itl.observe((now - last_at) / n)
                    last_at = now
                    sent = msg.completion_tokens
                    yield head + encoder.delta("".join(msg.tokens))
                    head = b""
                if msg.finish_reason:
                    finish = FINISH_REASONS.get(msg.finish_reason, "stop")
                    call.usage(msg, finish)
                    tail = encoder.finish(finish)
                    if encoder.include_usage:
                        tail += encoder.usage(msg.prompt_tokens, msg.completion_tokens)
                    yield head + tail + sse.DONE
                    metrics.output_tokens_total.labels("edge", call.model).inc(msg.completion_tokens)
                    return
                msg = await iterator.__anext__()
        except StopAsyncIteration:
            code = "INTERNAL"
            err = http_errors.http_error(
                500, "The backend ended the stream early.", code="internal_error", request_id=call.request_id
            )
            yield sse.error_event(err.body["error"])
        except grpc.aio.AioRpcError as exc:
            http_err = http_errors.from_rpc(exc, call.request_id)
            code = http_err.grpc_code
            log.warning("stream failed after first byte", extra={"code": code})
            yield sse.error_event(http_err.body["error"])
        except BaseException:
            # Client gone (the ASGI server cancels us): cancel downstream so the engine aborts.
            code = "CANCELLED"
            raise
        finally:
            rpc.cancel()
            metrics.in_flight.dec()
            self.in_flight -= 1
            self._finish(call, code, 200)

    # -- bookkeeping --------------------------------------------------------------------------

    def _error(
        self, err: http_errors.HttpError, call: _Call, domain: errors.AftershockError | None
    ) -> Response:
        status = 413 if domain is not None and domain.error_type == "request_too_large" else err.status
        if isinstance(domain, RateLimitExceeded):
            call.rate_headers = domain.headers
        self._finish(call, err.grpc_code, status)
        return Response(
            err.encoded(),
            status_code=status,
            media_type="application/json",
            headers={**err.headers, **_headers(call)},
        )

    def _finish(self, call: _Call, code: str, status: int) -> None:
        if call.client_span is not None:
            end_span(call.client_span, code)
            call.client_span = None
        elapsed = time.perf_counter() - call.started
        m = self._metrics
        m.requests_total.labels("edge", call.model, code).inc()
        m.request_duration_seconds.labels("edge", call.model, "true" if call.stream else "false").observe(
            elapsed, call.exemplar()
        )
        m.http_responses_total.labels(str(status)).inc()
        if code not in ("OK", "CANCELLED"):
            log.info(
                "request failed", extra={"code": code, "status": status, "duration_s": round(elapsed, 4)}
            )


async def _disconnected(request: Request) -> None:
    with contextlib.suppress(Exception):
        while (await request.receive())["type"] != "http.disconnect":
            pass


def _headers(call: _Call) -> dict[str, str]:
    """x-request-id always; traceparent so a user can find the request's trace in Jaeger."""
    headers = {"x-request-id": call.request_id, **call.rate_headers}
    if call.attempts > 1:
        # The backend retried (before the first token, for a stream): drills and clients can tell.
        headers["x-aftershock-attempts"] = str(call.attempts)
    ctx = call.span.get_span_context()
    if ctx.is_valid:
        headers["traceparent"] = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    return headers


def _describe(call: _Call, parsed: ChatCompletionRequest | CompletionRequest, chat: bool) -> None:
    """GenAI semantic-convention attributes on the request's span (never the prompt text)."""
    if not call.span.is_recording():
        return
    attrs: dict[str, str | int | float] = {
        GEN_AI_OPERATION: "chat" if chat else "text_completion",
        GEN_AI_REQUEST_MODEL: parsed.model,
        GEN_AI_RESPONSE_ID: ("chatcmpl-" if chat else "cmpl-") + call.request_id,
        "aftershock.request_id": call.request_id,
        "aftershock.stream": parsed.stream,
    }
    max_tokens = parsed.effective_max_tokens()
    if max_tokens is not None:
        attrs[GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
    if parsed.temperature is not None:
        attrs[GEN_AI_REQUEST_TEMPERATURE] = parsed.temperature
    if parsed.top_p is not None:
        attrs[GEN_AI_REQUEST_TOP_P] = parsed.top_p
    if parsed.seed is not None:
        attrs[GEN_AI_REQUEST_SEED] = parsed.seed
    call.span.set_attributes(attrs)


def _usage(msg: pb.GenerateResponse) -> dict[str, int]:
    return {
        "prompt_tokens": msg.prompt_tokens,
        "completion_tokens": msg.completion_tokens,
        "total_tokens": msg.prompt_tokens + msg.completion_tokens,
    }


def _to_grpc(parsed: ChatCompletionRequest | CompletionRequest, request_id: str) -> pb.GenerateRequest:
    sampling = pb.SamplingParams(max_tokens=parsed.effective_max_tokens() or 0, stop=parsed.stop_list())
    if parsed.seed is not None:
        sampling.seed = parsed.seed
    if parsed.temperature is not None:
        sampling.temperature = parsed.temperature
    if parsed.top_p is not None:
        sampling.top_p = parsed.top_p
    req = pb.GenerateRequest(
        request_id=request_id, model=parsed.model, sampling=sampling, stream=parsed.stream
    )
    if isinstance(parsed, ChatCompletionRequest):
        req.chat.messages.extend(
            pb.ChatMessage(role=m.role, content=m.text(), name=m.name or "") for m in parsed.messages
        )
    else:
        req.prompt = parsed.prompt_text()
    return req
