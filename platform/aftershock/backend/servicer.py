"""The Backend gRPC service: route each request to a replica and relay its stream.

Deadlines: each downstream call gets the caller's *remaining* time. Cancellation: when the caller
goes, the downstream call is cancelled, and the engine aborts. Failover: a retryable failure before
any token was relayed is tried on another replica; after tokens were relayed, only a deterministic
request is resumed elsewhere, skipping the tokens already delivered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace

from aftershock import errors
from aftershock.backend.registry import ModelRegistry
from aftershock.backend.replicas import ReplicaPool
from aftershock.backend.router import Router
from aftershock.context import request_id_var
from aftershock.metrics import BackendMetrics
from aftershock.rpc.status import RETRYABLE_CODES, error_from_rpc
from aftershock.rpc.tracing import end_span, start_client_span
from aftershock.tracing import GEN_AI_OPERATION, GEN_AI_REQUEST_MODEL
from aftershock.v1 import backend_pb2_grpc
from aftershock.v1 import generation_pb2 as pb

log = logging.getLogger(__name__)

INFERENCE_GENERATE = "/aftershock.v1.Inference/Generate"

# Codes that say "this replica could not take the request", so another one may.
_REROUTE_CODES = RETRYABLE_CODES


def is_deterministic(request: pb.GenerateRequest) -> bool:
    s = request.sampling
    return s.HasField("seed") or (s.HasField("temperature") and s.temperature == 0.0)


def skip_delivered(msg: pb.GenerateResponse, skip: int) -> tuple[pb.GenerateResponse | None, int]:
    """Drop the first `skip` characters of a resumed stream's text.

    A deterministic request regenerates the same text on any replica, though not necessarily in
    the same pieces, so characters (not messages or pieces) are the unit that lines up. Returns the
    message left to send (None when nothing is left and it is not the last) and what is left to skip.
    """
    pieces = list(msg.tokens)
    kept: list[str] = []
    for i, piece in enumerate(pieces):
        if skip >= len(piece):
            skip -= len(piece)
            continue
        kept = [piece[skip:], *pieces[i + 1 :]]
        skip = 0
        break
    if not kept and not msg.finish_reason:
        return None, skip
    del msg.tokens[:]
    msg.tokens.extend(kept)
    return msg, skip


class BackendServicer(backend_pb2_grpc.BackendServicer):
    def __init__(
        self, registry: ModelRegistry, pool: ReplicaPool, router: Router, metrics: BackendMetrics
    ) -> None:
        self._registry = registry
        self._pool = pool
        self._router = router
        self._metrics = metrics

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.GenerateResponse]:
        request_id_var.set(request.request_id)
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
        async for msg in self.relay(request, deadline):
            yield msg

    async def relay(
        self, request: pb.GenerateRequest, deadline: float | None
    ) -> AsyncIterator[pb.GenerateResponse]:
        model = request.model
        replicas = self._router.replicas_of(model)  # NOT_FOUND for an unknown model
        tried: set[str] = set()
        delivered = 0  # characters relayed to the caller
        counted = 0  # completion tokens counted in metrics
        deterministic = is_deterministic(request)
        out_tokens = self._metrics.output_tokens_total.labels("backend", model)
        while True:
            replica = self._router.pick(model, exclude=tried)
            tried.add(replica.name)
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise errors.DeadlineExceeded("The request's deadline passed before it reached a replica.")
            skip = delivered
            span, metadata = start_client_span(INFERENCE_GENERATE, replica.address)
            span.set_attribute("aftershock.replica", replica.name)
            call = replica.stub.Generate(request, timeout=timeout, metadata=metadata)
            replica.in_flight += 1
            code_name = "OK"
            try:
                async for msg in call:
                    if skip:
                        kept, skip = skip_delivered(msg, skip)
                        if kept is None:
                            continue
                        msg = kept
                    delivered += sum(len(t) for t in msg.tokens)
                    if msg.completion_tokens > counted:
                        out_tokens.inc(msg.completion_tokens - counted)
                        counted = msg.completion_tokens
                    msg.replica = replica.name
                    yield msg
                self._metrics.upstream_requests_total.labels(replica.name, "OK").inc()
                return
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                code_name = code.name
                self._metrics.upstream_requests_total.labels(replica.name, code.name).inc()
                if code == grpc.StatusCode.UNAVAILABLE:
                    replica.mark_unhealthy()
                others = [r for r in replicas if r.name not in tried and r.healthy]
                resumable = delivered == 0 or deterministic
                if code in _REROUTE_CODES and resumable and others:
                    phase = "before_first_token" if delivered == 0 else "mid_stream"
                    self._metrics.failovers_total.labels(model, phase, "attempted").inc()
                    trace.get_current_span().add_event(
                        "failover",
                        {
                            "from_replica": replica.name,
                            "code": code.name,
                            "phase": phase,
                            "delivered_chars": delivered,
                        },
                    )
                    log.warning(
                        "replica failed, trying another",
                        extra={"replica": replica.name, "code": code.name, "delivered": delivered},
                    )
                    continue
                raise error_from_rpc(exc) from None
            except BaseException:
                code_name = "CANCELLED"
                raise
            finally:
                replica.in_flight -= 1
                call.cancel()
                end_span(span, code_name)

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
