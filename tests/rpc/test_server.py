"""The gRPC server plumbing: health, graceful drain on shutdown, and the status interceptor."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from aftershock.inference.service import InferenceService
from aftershock.inference.settings import InferenceSettings
from aftershock.inference.sim_config import SimModelConfig
from aftershock.metrics import new_registry
from aftershock.v1 import generation_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.inference.vllm_fake import FakeAsyncLLM, started_engine
from tests.inproc import generate_request, inference_stub, start_inference, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_reports_serving_then_not_serving() -> None:
    replica = await start_inference([SimModelConfig(name="m")])
    channel = grpc.aio.insecure_channel(replica.address)
    health = health_pb2_grpc.HealthStub(channel)
    stopping: asyncio.Task[None] | None = None
    try:
        for service in ("", "aftershock.v1.Inference"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service="aftershock.v1.Inference"))
        assert (await watch.read()).status == SERVING
        started = time.monotonic()
        stopping = asyncio.create_task(replica.service.stop(grace_s=5.0))
        assert (await watch.read()).status == NOT_SERVING  # routers hear it before the port closes
        await stopping
        # An open health Watch is not work worth waiting for: no full grace period.
        assert time.monotonic() - started < 2.0
    finally:
        await (stopping if stopping is not None else replica.service.stop())
        await channel.close()


async def test_shutdown_drains_an_open_stream_then_refuses_new_calls() -> None:
    replica = await start_inference([SimModelConfig(name="slow", itl_s=0.02)])
    stopping: asyncio.Task[None] | None = None
    try:
        async with inference_stub(replica.address) as stub:
            call = stub.Generate(generate_request("slow", max_tokens=20, seed=1))
            msgs = [await call.read()]
            started = time.monotonic()
            stopping = asyncio.create_task(replica.service.stop(grace_s=5.0))
            while (msg := await call.read()) != grpc.aio.EOF:
                msgs.append(msg)
            assert await call.code() == grpc.StatusCode.OK
            last = msgs[-1]
            assert isinstance(last, pb.GenerateResponse)
            assert last.finish_reason == pb.FINISH_REASON_LENGTH and last.completion_tokens == 20
            await stopping
            elapsed = time.monotonic() - started
            assert elapsed < 2.0, "shutdown waited for the grace period instead of the stream"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.Generate(generate_request("slow"), timeout=2):
                    pass
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if stopping is None:
            await replica.service.stop()
        else:
            await stopping


async def test_unexpected_exception_becomes_internal_without_details() -> None:
    # The vLLM adapter maps vLLM's exceptions (and ValueError); anything else reaches the interceptor.
    fake = FakeAsyncLLM(fail_at=0, failure=KeyError("secret internal detail"))
    engine, _ = await started_engine(fake)
    registry = new_registry()
    service = InferenceService(
        InferenceSettings(port=0, metrics_port=0, shutdown_grace_s=0.05), engine, registry
    )
    await service.start()
    try:
        async with inference_stub(f"127.0.0.1:{service.port}") as stub:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.Generate(generate_request("org/model-7b")):
                    pass
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert info.value.details() == "Internal error."
            labels = {"service": "inference", "model": "org/model-7b", "code": "INTERNAL"}
            await wait_until(lambda: registry.get_sample_value("aftershock_requests_total", labels) == 1)
            assert registry.get_sample_value("aftershock_in_flight_requests", {"service": "inference"}) == 0
            # The engine was still told to drop the request (by the engine's own id for it).
            assert fake.aborted == [fake.calls[0].request_id] and fake.aborted[0].startswith("req-1-")
            # The same service streams normally otherwise.
            fake.fail_at = None
            msgs = [m async for m in stub.Generate(generate_request("org/model-7b", request_id="ok-1"))]
            assert "".join(t for m in msgs for t in m.tokens) == "".join(fake.pieces or ())
            assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH
    finally:
        await service.stop()
