"""A replica is visible while its model loads, and one whose engine dies leaves the fleet cleanly:
NOT_SERVING, a non-zero exit for its supervisor, and the backend fails its requests over."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from aftershock.inference.service import ENGINE_DEAD_EXIT, InferenceService, supervise
from aftershock.inference.settings import InferenceSettings
from aftershock.inference.sim_config import SimModelConfig
from aftershock.inference.vllm_engine import VllmEngine
from aftershock.metrics import new_registry
from aftershock.v1 import generation_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.inference import vllm_fake as v
from tests.inproc import (
    STOP_GRACE_S,
    backend_stub,
    generate_request,
    inference_stub,
    start_backend,
    start_inference,
    wait_until,
    write_registry,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MODEL = "org/model-7b"


class GatedFake(v.FakeAsyncLLM):
    """Start-up blocks until `loaded` is set: a model still loading."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.loaded = asyncio.Event()

    async def is_tracing_enabled(self) -> bool:
        await self.loaded.wait()
        return False


def vllm_service(fake: v.FakeAsyncLLM, name: str = "gpu-0") -> InferenceService:
    engine = VllmEngine({"model": MODEL}, None, api=v.fake_api(fake, []), watch_interval_s=0.01)
    settings = InferenceSettings(port=0, metrics_port=0, replica_name=name, shutdown_grace_s=STOP_GRACE_S)
    return InferenceService(settings, engine, new_registry())


async def health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service="aftershock.v1.Inference"))
        return int(reply.status)


def state(service: InferenceService) -> dict[str, float | None]:
    return {
        s: service.registry.get_sample_value(
            "aftershock_engine_state", {"replica": service.settings.replica_name, "state": s}
        )
        for s in ("loading", "ready", "dead")
    }


async def test_a_loading_replica_answers_health_not_serving_then_serving() -> None:
    fake = GatedFake()
    service = vllm_service(fake)
    await service.open()
    loading = asyncio.create_task(service.load())
    address = f"127.0.0.1:{service.port}"
    try:
        assert await health(address) == NOT_SERVING
        assert state(service) == {"loading": 1, "ready": 0, "dead": 0}
        async with inference_stub(address) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                [m async for m in stub.Generate(generate_request(MODEL))]
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert list((await stub.ListModels(pb.ListModelsRequest())).models) == []
        fake.loaded.set()
        await asyncio.wait_for(loading, 5)
        assert await health(address) == SERVING
        assert state(service) == {"loading": 0, "ready": 1, "dead": 0}
    finally:
        fake.loaded.set()
        await service.stop()


async def test_a_dead_engine_turns_the_replica_not_serving_and_exits() -> None:
    fake = v.FakeAsyncLLM()
    service = vllm_service(fake)
    await service.start()
    address = f"127.0.0.1:{service.port}"
    seen: list[int] = []

    async def watch() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            async for reply in stub.Watch(health_pb2.HealthCheckRequest(service="aftershock.v1.Inference")):
                seen.append(int(reply.status))

    watcher = asyncio.create_task(watch())
    stop: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    supervisor = asyncio.create_task(supervise(service, stop))
    await wait_until(lambda: seen == [SERVING], what="the health watch started")
    fake.dead = True  # the engine core dies while idle
    assert await asyncio.wait_for(supervisor, 5) == ENGINE_DEAD_EXIT
    await asyncio.wait_for(asyncio.gather(watcher, return_exceptions=True), 5)
    assert seen[0] == SERVING and NOT_SERVING in seen
    assert state(service)["dead"] == 1


async def test_the_backend_fails_over_from_a_replica_whose_engine_died(tmp_path: Path) -> None:
    dying = v.FakeAsyncLLM(fail_at=0, failure=v.EngineDeadError())
    gpu = vllm_service(dying, "gpu-0")
    await gpu.start()
    sim = await start_inference([SimModelConfig(name=MODEL)], name="sim-0")
    registry = write_registry(
        tmp_path / "registry.yaml",
        {"gpu-0": f"127.0.0.1:{gpu.port}", "sim-0": sim.address},
        {MODEL: ["gpu-0", "sim-0"]},
    )
    backend = await start_backend(registry, wait_for=["gpu-0", "sim-0"])
    try:
        async with backend_stub(f"127.0.0.1:{backend.port}") as stub:
            for seed in range(4):  # some of these try the dying replica first
                msgs = [m async for m in stub.Generate(generate_request(MODEL, seed=seed))]
                assert {m.replica for m in msgs} == {"sim-0"}
                assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH
        assert len(dying.calls) >= 1  # the dead engine was tried, and its failure retried elsewhere
    finally:
        await backend.stop()
        await gpu.stop()
        await sim.service.stop()
