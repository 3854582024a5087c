"""A streamed completion: the backend's messages relayed as SSE chunks, with TTFT and ITL measured."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from starlette.responses import Response, StreamingResponse

from aftershock import errors
from aftershock.edge import errors as http_errors
from aftershock.edge import responses, sse
from aftershock.edge.exchange import Exchange
from aftershock.metrics import EdgeMetrics
from aftershock.rpc.client import end_call
from aftershock.v1 import generation_pb2 as pb

log = logging.getLogger(__name__)


async def open_stream(
    rpc: Any,
    shape: responses.ResponseShape,
    exchange: Exchange,
    metrics: EdgeMetrics,
    *,
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
    release: Callable[[], None],
) -> Response:
    """Waits for the first message, so that a failure before it is a proper HTTP error status.

    Once this returns, the stream owns the request: `release` runs when it ends.
    """
    iterator = rpc.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        raise errors.Internal("The backend ended the stream without a result.") from None
    except BaseException:
        rpc.cancel()
        raise
    exchange.attempts = first.attempts
    completion_id, created, model = responses.served_as(first, completion_id, created, model)
    exchange.served_model = first.model
    exchange.answered_as(completion_id, model)
    encoder = responses.ChunkEncoder(
        shape, completion_id=completion_id, created=created, model=model, include_usage=include_usage
    )
    return StreamingResponse(
        _events(rpc, iterator, first, encoder, exchange, metrics, release),
        media_type=sse.MEDIA_TYPE,
        headers={**sse.HEADERS, **exchange.headers()},
    )


async def _events(
    rpc: Any,
    iterator: AsyncIterator[pb.GenerateResponse],
    first: pb.GenerateResponse,
    encoder: responses.ChunkEncoder,
    exchange: Exchange,
    metrics: EdgeMetrics,
    release: Callable[[], None],
) -> AsyncIterator[bytes]:
    itl = metrics.inter_token_latency_seconds.labels(exchange.model)
    code = "OK"
    complete = False  # the backend sent its last message: the call ends by itself
    last_at = 0.0
    sent = 0  # completion tokens sent so far
    msg = first
    try:
        head = encoder.opening()
        while True:
            if msg.tokens:
                now = time.perf_counter()
                n = max(1, msg.completion_tokens - sent)
                if sent == 0:
                    ttft = now - exchange.started
                    metrics.time_to_first_token_seconds.labels(exchange.model).observe(
                        ttft, exchange.exemplar()
                    )
                else:
                    itl.observe((now - last_at) / n)
                last_at = now
                sent = msg.completion_tokens
                yield head + encoder.delta("".join(msg.tokens))
                head = b""
            if msg.finish_reason:
                finish = responses.finish_reason(msg.finish_reason)
                exchange.usage(msg.prompt_tokens, msg.completion_tokens, finish)
                tail = encoder.finish(finish)
                if encoder.include_usage:
                    tail += encoder.usage(msg.prompt_tokens, msg.completion_tokens)
                complete = True
                yield head + tail + sse.DONE
                metrics.output_tokens_total.labels("edge", exchange.model).inc(msg.completion_tokens)
                return
            msg = await iterator.__anext__()
    except StopAsyncIteration:
        code = "INTERNAL"
        early = errors.Internal("The backend ended the stream early.")
        err = http_errors.from_domain(early, exchange.request_id)
        yield sse.error_event(err.body["error"])
    except grpc.aio.AioRpcError as exc:
        http_err = http_errors.from_rpc(exc, exchange.request_id)
        code = http_err.grpc_code
        log.warning("stream failed after first byte", extra={"code": code})
        yield sse.error_event(http_err.body["error"])
    except BaseException:
        # Client gone (the ASGI server cancels us): cancel downstream so the engine aborts.
        code = "CANCELLED"
        raise
    finally:
        end_call(rpc, complete=complete, code=code)
        release()
        exchange.finish(metrics, code, 200)
