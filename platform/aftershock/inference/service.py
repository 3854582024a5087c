"""Assembles and runs the inference service: engine, gRPC server, health and metrics."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry

from aftershock.gpu import start_gpu_sampler
from aftershock.inference.engine import Engine
from aftershock.inference.servicer import InferenceServicer
from aftershock.inference.settings import InferenceSettings
from aftershock.metrics import EngineMetrics, HopMetrics, new_registry
from aftershock.rpc.interceptors import StatusInterceptor
from aftershock.rpc.server import RunningServer, install_stop_signals, start_server
from aftershock.v1 import inference_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "aftershock.v1.Inference"


def build_engine(settings: InferenceSettings, registry: CollectorRegistry) -> Engine:
    """The configured engine; engines other than sim are imported only when chosen."""
    if settings.engine == "sim":
        from aftershock.inference.sim import SimEngine

        return SimEngine(
            settings.resolved_sim_models(), EngineMetrics(registry), fault_seed=settings.fault_seed
        )
    if settings.engine == "vllm":
        from aftershock.inference.vllm_engine import VllmEngine

        return VllmEngine.from_settings(settings, registry)
    from aftershock.inference.openai_engine import OpenAIEngine

    return OpenAIEngine.from_settings(settings, registry)


class InferenceService:
    """The running service; tests start it in-process on port 0 and read `port`."""

    def __init__(self, settings: InferenceSettings, engine: Engine, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.engine = engine
        self.registry = registry
        self.hop_metrics = HopMetrics("inference", registry)
        self._server: RunningServer | None = None
        self._status: StatusInterceptor | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.port

    async def start(self) -> None:
        await self.engine.start()
        names = {m.name for m in self.engine.models()}
        servicer = InferenceServicer(self.engine, self.settings.replica_name)
        self._status = StatusInterceptor(self.hop_metrics, lambda: names)
        self._server = await start_server(
            host=self.settings.host,
            port=self.settings.port,
            register=lambda s: inference_pb2_grpc.add_InferenceServicer_to_server(servicer, s),
            service_names=(SERVICE_NAME,),
            interceptors=(self._status,),
        )
        log.info(
            "inference serving",
            extra={"port": self._server.port, "engine": self.engine.kind, "models": sorted(names)},
        )

    async def stop(self, grace_s: float | None = None) -> None:
        if self._server is not None:
            status = self._status
            await self._server.shutdown(
                self.settings.shutdown_grace_s if grace_s is None else grace_s,
                busy=lambda: status.active if status is not None else 0,
            )
        await self.engine.stop()


async def run(settings: InferenceSettings) -> None:
    from aftershock.metrics_http import start_metrics_server

    registry = new_registry()
    service = InferenceService(settings, build_engine(settings, registry), registry)
    await service.start()
    gpus = start_gpu_sampler(registry)
    log.info("gpu metrics", extra={"nvml": gpus is not None})
    start_metrics_server(settings.metrics_port, settings.host, registry)
    stop = asyncio.Event()
    install_stop_signals(stop)
    await stop.wait()
    log.info("inference draining", extra={"grace_s": settings.shutdown_grace_s})
    await service.stop()
