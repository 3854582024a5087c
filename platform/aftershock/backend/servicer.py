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

from aftershock import errors
from aftershock.backend.registry import ModelRegistry
from aftershock.backend.replicas import ReplicaPool
from aftershock.backend.router import Router
from aftershock.context import request_id_var
from aftershock.metrics import BackendMetrics
from aftershock.rpc.status import RETRYABLE_CODES, error_from_rpc
from aftershock.v1 import backend_pb2_grpc
from aftershock.v1 import generation_pb2 as pb

log = logging.getLogger(__name__)

# Codes that say "this replica could not take the request", so another one may.
_REROUTE_CODES = RETRYABLE_CODES


def is_deterministic(request: pb.GenerateRequest) -> bool:
    s = request.sampling
    return s.HasField("seed") or (s.HasField("temperature") and s.temperature == 0.0)


def skip_tokens(msg: pb.GenerateResponse, skip: int) -> tuple[pb.GenerateResponse | None, int]:
    """Drop the first `skip` tokens of a resumed stream; returns what is left to send and to skip."""
    n = len(msg.tokens)
    if skip >= n:
        if msg.finish_reason:
            out = pb.GenerateResponse()
            out.CopyFrom(msg)
            del out.tokens[:]
            return out, skip - n
        return None, skip - n
    del msg.tokens[:skip]
    return msg, 0


class BackendServicer(backend_pb2_grpc.BackendServicer):
    def __init__(
        self, registry: ModelRegistry, pool: ReplicaPool, router: Router, metrics: BackendMetrics
    ) -> None:
        self._registry = registry
        self._pool = pool
        self._router = router
        self._metrics = metrics

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.GenerateResponse]:
        request_id_var.set(request.request_id)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        async for msg in self.relay(request, deadline):
            yield msg

    async def relay(self, request: pb.GenerateRequest, deadline: float | None) -> AsyncIterator[pb.GenerateResponse]:
        model = request.model
        replicas = self._router.replicas_of(model)  # NOT_FOUND for an unknown model
        tried: set[str] = set()
        delivered = 0
        deterministic = is_deterministic(request)
        out_tokens = self._metrics.output_tokens_total.labels("backend", model)
        while True:
            replica = self._router.pick(model, exclude=tried)
            tried.add(replica.name)
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise errors.DeadlineExceeded("The request's deadline passed before it reached a replica.")
            skip = delivered
            call = replica.stub.Generate(request, timeout=timeout)
            replica.in_flight += 1
            try:
                async for msg in call:
                    if skip:
                        msg, skip = skip_tokens(msg, skip)  # type: ignore[assignment]
                        if msg is None:
                            continue
                    n = len(msg.tokens)
                    delivered += n
                    if n:
                        out_tokens.inc(n)
                    msg.replica = replica.name
                    yield msg
                self._metrics.upstream_requests_total.labels(replica.name, "OK").inc()
                return
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                self._metrics.upstream_requests_total.labels(replica.name, code.name).inc()
                if code == grpc.StatusCode.UNAVAILABLE:
                    replica.mark_unhealthy()
                others = [r for r in replicas if r.name not in tried and r.healthy]
                resumable = delivered == 0 or deterministic
                if code in _REROUTE_CODES and resumable and others:
                    phase = "before_first_token" if delivered == 0 else "mid_stream"
                    self._metrics.failovers_total.labels(model, phase, "attempted").inc()
                    log.warning(
                        "replica failed, trying another",
                        extra={"replica": replica.name, "code": code.name, "delivered": delivered},
                    )
                    continue
                raise error_from_rpc(exc) from None
            finally:
                replica.in_flight -= 1
                call.cancel()

    async def ListModels(  # noqa: N802 - gRPC method name
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        out = []
        for route in self._registry.config.models:
            replicas = [r for n in route.replicas if (r := self._pool.get(n)) is not None]
            ready = [r for r in replicas if r.healthy]
            info = pb.ModelInfo(name=route.name, total_replicas=len(route.replicas), ready_replicas=len(ready))
            learned = next((r.models[route.name] for r in ready if route.name in r.models), None)
            if learned is not None:
                info.max_model_len = learned.max_model_len
                info.max_output_tokens = learned.max_output_tokens
                info.engine = learned.engine
            out.append(info)
        return pb.ListModelsResponse(models=out)
