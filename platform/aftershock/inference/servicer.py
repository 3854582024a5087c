"""The Inference gRPC service: requests in, engine outputs out, one message per ready batch."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span

from aftershock import errors
from aftershock.context import request_id_var
from aftershock.inference import convert
from aftershock.inference.engine import Engine, EngineOutput
from aftershock.inference.load import LoadTracker
from aftershock.rpc.deadline import deadline_of
from aftershock.tracing import (
    ENGINE_FIRST_TOKEN,
    ENGINE_SCHEDULED,
    GEN_AI_FINISH_REASONS,
    GEN_AI_INPUT_TOKENS,
    GEN_AI_LATENCY_DECODE,
    GEN_AI_LATENCY_E2E,
    GEN_AI_LATENCY_PREFILL,
    GEN_AI_LATENCY_TIME_IN_QUEUE,
    GEN_AI_LATENCY_TIME_TO_FIRST_TOKEN,
    GEN_AI_OPERATION,
    GEN_AI_OUTPUT_TOKENS,
    GEN_AI_REQUEST_MAX_TOKENS,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_SYSTEM,
)
from aftershock.v1 import generation_pb2 as pb
from aftershock.v1 import inference_pb2, inference_pb2_grpc


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, engine: Engine, replica: str = "", ready: Callable[[], bool] = lambda: True) -> None:
        self._engine = engine
        self._replica = replica
        # False while the model loads (health says NOT_SERVING; a caller that ignores it gets 503).
        self._ready = ready
        self._load = LoadTracker(engine)

    def _start(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any], *, stream: bool = True
    ) -> tuple[AsyncIterator[EngineOutput], Span, int]:
        """Checks, span attributes and the engine's outputs for one request (either rpc)."""
        request_id_var.set(request.request_id)
        if not request.model:
            raise errors.InvalidArgument("model is required.", param="model")
        if not self._ready():
            raise errors.Unavailable("This replica is not ready (loading its model).", retry_after_s=5.0)
        span = trace.get_current_span()
        arrival_ns = time.time_ns()
        if span.is_recording():
            span.set_attributes(
                {
                    GEN_AI_OPERATION: "chat" if request.WhichOneof("input") == "chat" else "text_completion",
                    GEN_AI_REQUEST_MODEL: request.model,
                    GEN_AI_REQUEST_MAX_TOKENS: request.sampling.max_tokens,
                    GEN_AI_SYSTEM: self._engine.kind,
                    "aftershock.replica": self._replica,
                    "aftershock.request_id": request.request_id,
                }
            )
        engine_request = convert.engine_request(request, deadline_of(context), stream=stream)
        return self._load.track(self._engine.generate(engine_request)), span, arrival_ns

    async def Complete(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GenerateResponse:
        """A non-streamed request as one unary answer: the whole completion (request.stream ignored)."""
        outputs, span, arrival_ns = self._start(request, context, stream=False)
        return await self._whole(outputs, span, arrival_ns)

    async def _whole(
        self, outputs: AsyncIterator[EngineOutput], span: Span, arrival_ns: int
    ) -> pb.GenerateResponse:
        tokens: list[str] = []
        whole: pb.GenerateResponse | None = None
        async for out in outputs:  # drained to its end, so the engine's bookkeeping closes
            tokens.extend(out.tokens)
            if out.finish_reason is not None:
                _record(span, out, arrival_ns)
                whole = convert.response(out, tokens, reproducible=self._engine.reproducible)
        if whole is None:
            raise errors.Internal("The engine ended without a finish reason.")
        return whole

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.GenerateResponse]:
        outputs, span, arrival_ns = self._start(request, context)
        # Every message says whether a resume elsewhere would reproduce this stream.
        reproducible = self._engine.reproducible
        if not request.stream:
            # One message per hop for a non-streamed request: the whole completion at once.
            yield await self._whole(outputs, span, arrival_ns)
            return
        interval = request.stream_interval
        if interval <= 1:
            async for out in outputs:
                if out.finish_reason is not None:
                    _record(span, out, arrival_ns)
                yield convert.response(out, reproducible=reproducible)
            return
        # Batch to at least `interval` tokens per message, but never hold back the first token.
        pending: list[str] = []
        first = True
        async for out in outputs:
            pending.extend(out.tokens)
            if first or len(pending) >= interval or out.finish_reason is not None:
                if out.finish_reason is not None:
                    _record(span, out, arrival_ns)
                yield convert.response(out, pending, reproducible=reproducible)
                pending = []
                first = False

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        if not self._ready():
            return pb.ListModelsResponse()
        reproducible = self._engine.reproducible
        models = [convert.model_info(m, reproducible) for m in self._engine.models()]
        return pb.ListModelsResponse(models=models)

    async def GetLoad(
        self, request: inference_pb2.GetLoadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inference_pb2.EngineLoad:
        load = self._load.load()
        return inference_pb2.EngineLoad(
            running=load.running, waiting=load.waiting, kv_cache_usage=load.kv_cache_usage
        )


def _record(span: Span, out: EngineOutput, arrival_ns: int) -> None:
    """Usage and the engine's phases on the hop's own span: phase durations as attributes (vLLM's
    names) and their boundaries as timestamped events. Not child spans: exporting a span costs about
    65 µs of CPU here (benchmarks/overhead.py), three per request was a third of the service's
    telemetry; an event is a few µs and still marks the phases on the trace's timeline."""
    if not span.is_recording():
        return
    prefill_s = max(0.0, out.ttft_s - out.queue_s)
    span.set_attributes(
        {
            GEN_AI_INPUT_TOKENS: out.prompt_tokens,
            GEN_AI_OUTPUT_TOKENS: out.completion_tokens,
            GEN_AI_FINISH_REASONS: (out.finish_reason or "stop",),
            GEN_AI_LATENCY_TIME_IN_QUEUE: out.queue_s,
            GEN_AI_LATENCY_TIME_TO_FIRST_TOKEN: out.ttft_s,
            GEN_AI_LATENCY_PREFILL: prefill_s,
            GEN_AI_LATENCY_DECODE: max(0.0, out.e2e_s - out.ttft_s),
            GEN_AI_LATENCY_E2E: out.e2e_s,
        }
    )
    span.add_event(ENGINE_SCHEDULED, timestamp=arrival_ns + int(out.queue_s * 1e9))
    span.add_event(ENGINE_FIRST_TOKEN, timestamp=arrival_ns + int(out.ttft_s * 1e9))
