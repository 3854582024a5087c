"""Assembles and runs the backend service."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from opentelemetry.instrumentation.redis import RedisInstrumentor
from prometheus_client import CollectorRegistry

from aftershock import heap, tracing
from aftershock.backend.attempt import is_replica_failure
from aftershock.backend.breaker_sync import BreakerSync
from aftershock.backend.dedupe import Dedupe
from aftershock.backend.load_poll import poll_loads
from aftershock.backend.placement import Placement
from aftershock.backend.registry import ModelRegistry
from aftershock.backend.replicas import ReplicaPool
from aftershock.backend.router import Router
from aftershock.backend.servicer import BackendServicer
from aftershock.backend.settings import BackendSettings
from aftershock.metrics import BackendMetrics, new_registry
from aftershock.metrics_http import start_metrics_server
from aftershock.redis_guard import GuardedRedis, RedisGuardConfig
from aftershock.rpc.interceptors import StatusInterceptor
from aftershock.rpc.server import RunningServer, install_stop_signals, start_server
from aftershock.v1 import backend_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "aftershock.v1.Backend"


class BackendService:
    def __init__(self, settings: BackendSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else new_registry()
        self.metrics = BackendMetrics(self.registry)
        self.models = ModelRegistry(settings.registry_file, settings.fallback_catalogue, self.metrics)
        self.pool = ReplicaPool(
            self.metrics, breaker=settings.breaker_config(), is_failure=is_replica_failure
        )
        self.router = Router(self.models, self.pool, Placement(settings.placement_config()))
        self.breaker_sync: BreakerSync | None = None
        if settings.breaker_shared_state and settings.redis_url:
            redis = GuardedRedis(RedisGuardConfig(settings.redis_url), name="breaker_sync")
            self.breaker_sync = BreakerSync(redis, self.pool.breakers)
            self.pool.breaker_listeners.append(self.breaker_sync)
        dedupe_config = settings.dedupe_config()
        self.dedupe = Dedupe(dedupe_config, self.metrics) if dedupe_config is not None else None
        self._server: RunningServer | None = None
        self._status: StatusInterceptor | None = None
        self._reloader: asyncio.Task[None] | None = None
        self._load_poller: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.port

    async def start(self) -> None:
        if self.dedupe is not None:
            if not tracing.disabled():
                # Redis calls become child spans of the request. Not with the SDK off: its wrapper
                # would still cost about 20 µs of Python per call, for no-op spans.
                RedisInstrumentor().instrument()
            await self.dedupe.start()
        await self.pool.apply(self.models.config)
        if self.breaker_sync is not None:
            await self.breaker_sync.start()
        self._status = StatusInterceptor(self.metrics, self.models.model_names)
        servicer = BackendServicer(
            self.models,
            self.pool,
            self.router,
            self.metrics,
            retry=self.settings.retry_config(),
            max_in_flight=self.settings.max_in_flight,
            dedupe=self.dedupe,
            dedupe_content_hash=self.settings.dedupe_content_hash,
            hedge=self.settings.hedge_default(),
        )
        self._server = await start_server(
            host=self.settings.host,
            port=self.settings.port,
            register=lambda s: backend_pb2_grpc.add_BackendServicer_to_server(servicer, s),
            service_names=(SERVICE_NAME,),
            interceptors=(self._status,),
        )
        self._reloader = asyncio.create_task(self._reload_loop(), name="registry-reload")
        self._load_poller = asyncio.create_task(
            poll_loads(self.pool, self.settings.load_poll_s), name="replica-load-poll"
        )
        log.info("backend serving", extra={"port": self._server.port})

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry_reload_s)
            if self.models.reload():
                await self.pool.apply(self.models.config)

    async def stop(self, grace_s: float | None = None) -> None:
        for task in (self._reloader, self._load_poller):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._server is not None:
            status = self._status
            await self._server.shutdown(
                self.settings.shutdown_grace_s if grace_s is None else grace_s,
                busy=lambda: status.active if status is not None else 0,
            )
        await self.pool.close()
        if self.breaker_sync is not None:
            await self.breaker_sync.close()
        if self.dedupe is not None:
            await self.dedupe.close()


async def run(settings: BackendSettings) -> None:
    service = BackendService(settings)
    await service.start()
    start_metrics_server(settings.metrics_port, settings.host, service.registry)
    heap.prepare_for_serving()
    stop = asyncio.Event()
    install_stop_signals(stop)
    await stop.wait()
    log.info("backend draining", extra={"grace_s": settings.shutdown_grace_s})
    await service.stop()
