"""The Backend gRPC service: admission, dedupe and the relay, wired together.

Deadlines: each downstream try gets the caller's *remaining* time. Cancellation: when the caller
goes, the downstream call is cancelled and the engine aborts. Retries, breakers and failover are
the relay's (backend/failover.py); dedupe wraps it when the request has a key (backend/dedupe).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace

from aftershock import errors
from aftershock.backend.dedupe import Dedupe, Identity, content_key, fingerprint
from aftershock.backend.failover import Failover
from aftershock.backend.registry import HedgeRoute, ModelRegistry
from aftershock.backend.replicas import ReplicaPool
from aftershock.backend.resume import is_deterministic
from aftershock.backend.retry import RetryConfig
from aftershock.backend.router import Router
from aftershock.clock import SYSTEM_CLOCK, Clock
from aftershock.context import request_id_var
from aftershock.metrics import BackendMetrics
from aftershock.rpc.deadline import deadline_of
from aftershock.rpc.whole import fold
from aftershock.tracing import GEN_AI_OPERATION, GEN_AI_REQUEST_MODEL
from aftershock.v1 import backend_pb2_grpc
from aftershock.v1 import generation_pb2 as pb


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
        hedge: HedgeRoute | None = None,
    ) -> None:
        self._registry = registry
        self._pool = pool
        self._router = router
        self._metrics = metrics
        self._failover = Failover(
            router, metrics, retry or RetryConfig(), clock, rng or random.Random(), hedge
        )
        self._max_in_flight = max_in_flight
        self._dedupe = dedupe
        self._dedupe_content_hash = dedupe_content_hash
        self.in_flight = 0

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.GenerateResponse]:
        deadline = self._admit(request, context)
        self.in_flight += 1
        try:
            source = self._source(request, deadline)
            async with contextlib.aclosing(source):
                async for msg in source:
                    yield msg
        finally:
            self.in_flight -= 1

    async def Complete(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GenerateResponse:
        """A non-streamed request as one unary call: the same relay (retries, failover, breakers,
        dedupe), its one message answered at once. request.stream is taken as false."""
        if request.stream:
            request.stream = False
        deadline = self._admit(request, context)
        self.in_flight += 1
        try:
            source = self._source(request, deadline)
            async with contextlib.aclosing(source):
                whole = await fold(source)
        finally:
            self.in_flight -= 1
        if whole is None or not whole.finish_reason:
            raise errors.Internal("The relay ended without a result.")
        return whole

    def _admit(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> float | None:
        """Load shedding and the hop's span attributes; the caller's deadline."""
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
        return deadline_of(context)

    def _source(
        self, request: pb.GenerateRequest, deadline: float | None
    ) -> AsyncGenerator[pb.GenerateResponse, None]:
        """The relay itself, or the relay behind dedupe when the request has a key."""
        key = request.idempotency_key
        if not key and self._dedupe_content_hash and is_deterministic(request):
            key = content_key(request)
        if self._dedupe is None or not key:
            return self._failover.relay(request, deadline)
        self._router.replicas_of(request.model)  # an unknown model is NOT_FOUND, never cached
        return self._dedupe.serve(  # type: ignore[return-value]  # an async generator function
            key,
            fingerprint(request),
            lambda: self._failover.relay(request, deadline),
            stream=request.stream,
            request=request,
            identity=Identity(request.completion_id, request.created),
        )

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
                info.reproducible = learned.reproducible
            out.append(info)
        return pb.ListModelsResponse(models=out)
