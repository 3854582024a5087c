"""Assembles and runs the inference service: engine, gRPC server, health and metrics.

A GPU replica takes minutes to load its model, so the order matters: /metrics first (Prometheus
scrapes a loading replica as up), then gRPC with health NOT_SERVING (routers wait), then the model,
then SERVING. aftershock_engine_state says which of loading / ready / dead the replica is in.
An engine that dies under the service (vLLM's engine core) turns the replica NOT_SERVING and ends
the process with ENGINE_DEAD_EXIT, so its supervisor (Kubernetes, compose) starts a fresh one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prometheus_client import CollectorRegistry

from aftershock import heap
from aftershock.inference.engine import Engine, MortalEngine
from aftershock.inference.gpu import start_gpu_sampler
from aftershock.inference.servicer import InferenceServicer
from aftershock.inference.settings import InferenceSettings
from aftershock.metrics import EngineMetrics, EngineStateMetrics, HopMetrics, new_registry
from aftershock.rpc.interceptors import StatusInterceptor
from aftershock.rpc.server import RunningServer, install_stop_signals, start_server
from aftershock.v1 import inference_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "aftershock.v1.Inference"
# The process's exit status when its engine died (any non-zero status restarts it; this one says why).
ENGINE_DEAD_EXIT = 3


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
        self.state = EngineStateMetrics(registry, settings.replica_name)
        self.ready = False
        self._names: set[str] = set()
        self._server: RunningServer | None = None
        self._status: StatusInterceptor | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.port

    async def start(self) -> None:
        await self.open()
        await self.load()

    async def open(self) -> None:
        """gRPC up with health NOT_SERVING, before the model: the replica is visible while it loads."""
        self.state.set("loading")
        servicer = InferenceServicer(self.engine, self.settings.replica_name, ready=lambda: self.ready)
        names = self._names
        self._status = StatusInterceptor(self.hop_metrics, lambda: names)
        self._server = await start_server(
            host=self.settings.host,
            port=self.settings.port,
            register=lambda s: inference_pb2_grpc.add_InferenceServicer_to_server(servicer, s),
            service_names=(SERVICE_NAME,),
            interceptors=(self._status,),
            serving=False,
        )
        log.info("inference loading", extra={"port": self._server.port, "engine": self.engine.kind})

    async def load(self) -> None:
        assert self._server is not None, "open() first"
        try:
            await self.engine.start()
        except BaseException:
            self.state.set("dead")
            raise
        self._names.update(m.name for m in self.engine.models())
        self.ready = True
        self.state.set("ready")
        await self._server.set_serving(True)
        log.info(
            "inference serving",
            extra={
                "port": self._server.port,
                "engine": self.engine.kind,
                "models": sorted(self._names),
                "reproducible": self.engine.reproducible,
            },
        )

    async def engine_died(self) -> None:
        """Returns once the engine has died; never for engines that cannot."""
        if isinstance(self.engine, MortalEngine):
            await self.engine.dead.wait()
        else:
            await asyncio.Event().wait()

    async def mark_dead(self) -> None:
        """NOT_SERVING at once, so routers stop sending before the process is gone."""
        self.ready = False
        self.state.set("dead")
        if self._server is not None:
            await self._server.set_serving(False)

    async def stop(self, grace_s: float | None = None) -> None:
        if self._server is not None:
            status = self._status
            await self._server.shutdown(
                self.settings.shutdown_grace_s if grace_s is None else grace_s,
                busy=lambda: status.active if status is not None else 0,
            )
        await self.engine.stop()


async def _first(*aws: asyncio.Future[Any]) -> None:
    await asyncio.wait(aws, return_when=asyncio.FIRST_COMPLETED)


async def run(settings: InferenceSettings) -> None:
    from aftershock.metrics_http import start_metrics_server

    registry = new_registry()
    service = InferenceService(settings, build_engine(settings, registry), registry)
    # Metrics and health before the model: a loading replica is scraped as up, and NOT_SERVING.
    start_metrics_server(settings.metrics_port, settings.host, registry)
    gpus = start_gpu_sampler(registry)
    log.info("gpu metrics", extra={"nvml": gpus is not None})
    await service.open()
    stop = asyncio.Event()
    install_stop_signals(stop)
    stopping = asyncio.ensure_future(stop.wait())
    loading = asyncio.ensure_future(service.load())
    await _first(stopping, loading)
    if not loading.done():  # SIGTERM while loading: nothing to drain
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        await service.stop(0)
        return
    if loading.exception() is not None:  # a model that cannot load ends the process for a restart
        log.error("inference engine failed to load", extra={"error": type(loading.exception()).__name__})
        await service.stop(0)
        loading.result()
    heap.prepare_for_serving()
    code = await supervise(service, stopping)
    if code:
        raise SystemExit(code)


async def supervise(service: InferenceService, stopping: asyncio.Future[Any]) -> int:
    """Serve until SIGTERM (drain; 0) or until the engine dies (NOT_SERVING; ENGINE_DEAD_EXIT)."""
    died = asyncio.ensure_future(service.engine_died())
    await _first(stopping, died)
    if died.done():
        await service.mark_dead()
        log.error("inference engine dead; exiting for a restart", extra={"exit_code": ENGINE_DEAD_EXIT})
        await service.stop(0)
        return ENGINE_DEAD_EXIT
    died.cancel()
    log.info("inference draining", extra={"grace_s": service.settings.shutdown_grace_s})
    await service.stop()
    return 0
