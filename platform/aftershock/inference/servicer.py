"""The Inference gRPC service: requests in, engine outputs out, one message per ready batch."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from aftershock import errors
from aftershock.context import request_id_var
from aftershock.inference import convert
from aftershock.inference.engine import Engine
from aftershock.v1 import generation_pb2 as pb
from aftershock.v1 import inference_pb2_grpc


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.GenerateResponse]:
        request_id_var.set(request.request_id)
        if not request.model:
            raise errors.InvalidArgument("model is required.", param="model")
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        outputs = self._engine.generate(convert.engine_request(request, deadline))
        if not request.stream:
            # One message per hop for a non-streamed request: the whole completion at once.
            tokens: list[str] = []
            async for out in outputs:
                tokens.extend(out.tokens)
                if out.finish_reason is not None:
                    yield convert.response(out, tokens)
            return
        interval = request.stream_interval
        if interval <= 1:
            async for out in outputs:
                yield convert.response(out)
            return
        # Batch to at least `interval` tokens per message, but never hold back the first token.
        pending: list[str] = []
        first = True
        async for out in outputs:
            pending.extend(out.tokens)
            if first or len(pending) >= interval or out.finish_reason is not None:
                yield convert.response(out, pending)
                pending = []
                first = False

    async def ListModels(  # noqa: N802 - gRPC method name
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[convert.model_info(m) for m in self._engine.models()])
