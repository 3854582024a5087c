"""Real services started inside the test process: gRPC servers on port 0, uvicorn on a free port.

Used by the component tests (tests/inference, tests/backend, tests/rpc): the same classes the
service processes run, wired over loopback, with no process start-up cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvicorn
import yaml
from aftershock.backend.service import BackendService
from aftershock.backend.settings import BackendSettings
from aftershock.edge.backend_client import BackendClient
from aftershock.edge.service import build as build_edge
from aftershock.edge.settings import EdgeSettings
from aftershock.inference.service import InferenceService
from aftershock.inference.settings import InferenceSettings
from aftershock.inference.sim import SimEngine
from aftershock.inference.sim_config import SimModelConfig
from aftershock.metrics import EngineMetrics, new_registry
from aftershock.v1 import backend_pb2_grpc, inference_pb2_grpc
from aftershock.v1 import generation_pb2 as pb
from prometheus_client import CollectorRegistry

# Re-exported: the component tests import it from here with the rest of their harness.
from tests.polling import wait_until as wait_until

# Shutdown grace for in-process servers. Not 0: grpcio 1.85's aio Server.stop(0) intermittently
# segfaults once the server has served RPCs (stop(None) and small positive graces do not).
STOP_GRACE_S = 0.05


@dataclass
class RunningInference:
    name: str
    service: InferenceService
    engine: SimEngine
    registry: CollectorRegistry

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.service.port}"

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


async def start_inference(
    models: Sequence[SimModelConfig], name: str = "inference-0", fault_seed: int = 0
) -> RunningInference:
    registry = new_registry()
    engine = SimEngine(models, EngineMetrics(registry), fault_seed=fault_seed)
    settings = InferenceSettings(port=0, metrics_port=0, replica_name=name, shutdown_grace_s=STOP_GRACE_S)
    service = InferenceService(settings, engine, registry)
    await service.start()
    return RunningInference(name, service, engine, registry)


def write_registry(path: Path, replicas: Mapping[str, str], models: Mapping[str, Sequence[str]]) -> Path:
    """A registry file: replica name → address, model → replica names."""
    doc = {
        "replicas": [{"name": n, "address": a} for n, a in replicas.items()],
        "models": [{"name": m, "replicas": list(rs)} for m, rs in models.items()],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


async def start_backend(
    registry_file: Path, wait_for: Iterable[str] = (), reload_s: float = 5.0
) -> BackendService:
    settings = BackendSettings(
        port=0,
        metrics_port=0,
        registry_file=registry_file,
        registry_reload_s=reload_s,
        shutdown_grace_s=STOP_GRACE_S,
    )
    service = BackendService(settings)
    await service.start()
    names = tuple(wait_for)
    if names:
        assert await service.pool.wait_healthy(names, within_s=10), f"replicas {names} never became healthy"
    return service


class EdgeServer:
    """The edge app from aftershock.edge.service.build, served by uvicorn in this event loop."""

    def __init__(self, backend_target: str, **settings: object) -> None:
        self.settings = EdgeSettings(port=0, metrics_port=0, backend_target=backend_target, **settings)  # type: ignore[arg-type]
        self.server: uvicorn.Server
        self.client: BackendClient
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server, self.client = build_edge(self.settings)
        self._task = asyncio.create_task(self.server.serve())
        task = self._task

        def started() -> bool:
            assert not task.done(), "uvicorn exited during start-up"
            return bool(self.server.started)

        await wait_until(started, 10, "uvicorn started")
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)
        await self.client.close()


@dataclass
class InProcessStack:
    """Sim inference replicas → backend → edge (HTTP), all in this process."""

    replicas: list[RunningInference]
    backend: BackendService
    edge: EdgeServer

    @property
    def aborted(self) -> int:
        return sum(r.engine.stats.aborted for r in self.replicas)


@asynccontextmanager
async def in_process_stack(
    tmp_path: Path, models: Sequence[SimModelConfig], extra_routes: Mapping[str, Sequence[str]] | None = None
) -> AsyncIterator[InProcessStack]:
    replica = await start_inference(models)
    routes: dict[str, Sequence[str]] = {m.name: [replica.name] for m in models}
    routes.update(extra_routes or {})
    registry = write_registry(tmp_path / "registry.yaml", {replica.name: replica.address}, routes)
    backend = await start_backend(registry, wait_for=[replica.name])
    edge = EdgeServer(f"127.0.0.1:{backend.port}")
    await edge.start()
    try:
        yield InProcessStack([replica], backend, edge)
    finally:
        await edge.stop()
        await backend.stop()
        await replica.service.stop()


@asynccontextmanager
async def inference_stub(address: str) -> AsyncIterator[inference_pb2_grpc.InferenceStub]:
    channel = grpc.aio.insecure_channel(address)
    try:
        yield inference_pb2_grpc.InferenceStub(channel)
    finally:
        await channel.close()


@asynccontextmanager
async def backend_stub(address: str) -> AsyncIterator[backend_pb2_grpc.BackendStub]:
    channel = grpc.aio.insecure_channel(address)
    try:
        yield backend_pb2_grpc.BackendStub(channel)
    finally:
        await channel.close()


def generate_request(
    model: str,
    prompt: str = "tell me a story",
    *,
    max_tokens: int = 8,
    seed: int | None = 1,
    stream: bool = True,
    stream_interval: int = 0,
    temperature: float | None = None,
    request_id: str = "req-1",
) -> pb.GenerateRequest:
    sampling = pb.SamplingParams(max_tokens=max_tokens)
    if seed is not None:
        sampling.seed = seed
    if temperature is not None:
        sampling.temperature = temperature
    return pb.GenerateRequest(
        request_id=request_id,
        model=model,
        prompt=prompt,
        sampling=sampling,
        stream=stream,
        stream_interval=stream_interval,
    )


def trailing(exc: grpc.aio.AioRpcError) -> dict[str, str]:
    """An RPC error's trailing metadata as a plain dict."""
    out: dict[str, str] = {}
    for key, value in exc.trailing_metadata() or ():
        out[key] = value if isinstance(value, str) else value.decode()
    return out
