"""Inference replicas: one channel each, health watched over grpc.health.v1, model limits learned."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aftershock.backend.breaker_metrics import BreakerMetrics
from aftershock.backend.placement import EngineLoad
from aftershock.backend.registry import RegistryConfig, ReplicaConfig
from aftershock.breaker import Breaker, BreakerConfig, BreakerListener
from aftershock.metrics import BackendMetrics
from aftershock.rpc.client import insecure_channel
from aftershock.v1 import generation_pb2 as pb
from aftershock.v1 import inference_pb2_grpc

log = logging.getLogger(__name__)

INFERENCE_SERVICE = "aftershock.v1.Inference"


class Replica:
    def __init__(
        self,
        config: ReplicaConfig,
        breaker: BreakerConfig | None = None,
        is_failure: Callable[[BaseException], bool] = lambda exc: True,
        listeners: Sequence[BreakerListener] = (),
    ) -> None:
        self.breaker = Breaker(
            f"inference:{config.name}", breaker or BreakerConfig(), is_failure=is_failure, listeners=listeners
        )
        self.name = config.name
        self.address = config.address
        self.channel = insecure_channel(config.address)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)
        self.healthy = False
        self.in_flight = 0
        # What the engine last reported (running, waiting, KV cache usage); see placement.
        self.load = EngineLoad()
        self.models: dict[str, pb.ModelInfo] = {}
        self._watch: asyncio.Task[None] | None = None

    def mark_unhealthy(self) -> None:
        """A call failed at the transport: stop routing here until health says SERVING again."""
        self.healthy = False

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        await self.channel.close()


class ReplicaPool:
    """Keeps one Replica per configured address and its health up to date."""

    def __init__(
        self,
        metrics: BackendMetrics,
        *,
        breaker: BreakerConfig | None = None,
        is_failure: Callable[[BaseException], bool] = lambda exc: True,
        retry_min_s: float = 0.2,
        retry_max_s: float = 2.0,
    ) -> None:
        self._metrics = metrics
        self._breaker = breaker or BreakerConfig()
        self._is_failure = is_failure
        # Every replica's breaker reports to these (metrics; BreakerSync when state is shared).
        self.breaker_listeners: list[BreakerListener] = [BreakerMetrics(metrics)]
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self.replicas: dict[str, Replica] = {}
        self._published: set[tuple[str, str]] = set()
        self._config = RegistryConfig()
        self._changed = asyncio.Event()

    def get(self, name: str) -> Replica | None:
        return self.replicas.get(name)

    async def apply(self, config: RegistryConfig) -> None:
        """Open channels for new replicas, close removed ones; keep unchanged ones as they are."""
        self._config = config
        wanted = {r.name: r for r in config.replicas}
        for name in list(self.replicas):
            old = self.replicas[name]
            if name not in wanted or wanted[name].address != old.address:
                del self.replicas[name]
                old.breaker.forget()
                await old.close()
        for name, rc in wanted.items():
            if name not in self.replicas:
                replica = Replica(rc, self._breaker, self._is_failure, tuple(self.breaker_listeners))
                self.replicas[name] = replica
                replica._watch = asyncio.create_task(self._watch(replica), name=f"health-{name}")
        self._publish()

    def _publish(self) -> None:
        gauge = self._metrics.replica_healthy
        current: set[tuple[str, str]] = set()
        for route in self._config.models:
            for name in route.replicas:
                replica = self.replicas.get(name)
                gauge.labels(route.name, name).set(1 if replica is not None and replica.healthy else 0)
                current.add((route.name, name))
        # A route removed from the registry must not keep reporting a replica as down.
        for stale in self._published - current:
            gauge.remove(*stale)
        self._published = current

    def _set_health(self, replica: Replica, healthy: bool) -> None:
        if replica.healthy != healthy:
            log.info("replica health changed", extra={"replica": replica.name, "healthy": healthy})
        replica.healthy = healthy
        self._publish()
        self._changed.set()

    async def _learn_models(self, replica: Replica) -> None:
        resp = await replica.stub.ListModels(pb.ListModelsRequest(), timeout=2.0)
        replica.models = {m.name: m for m in resp.models}

    async def _watch(self, replica: Replica) -> None:
        """Follow the replica's health stream; reconnect with backoff when it breaks."""
        health = health_pb2_grpc.HealthStub(replica.channel)
        backoff = self._retry_min_s
        while True:
            try:
                call = health.Watch(health_pb2.HealthCheckRequest(service=INFERENCE_SERVICE))
                async for resp in call:
                    serving = resp.status == health_pb2.HealthCheckResponse.SERVING
                    if serving:
                        await self._learn_models(replica)
                        backoff = self._retry_min_s
                    self._set_health(replica, serving)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                if replica.healthy:
                    log.warning(
                        "replica health stream broke",
                        extra={"replica": replica.name, "code": exc.code().name},
                    )
            self._set_health(replica, False)
            await asyncio.sleep(backoff)
            backoff = min(self._retry_max_s, backoff * 2)

    async def wait_healthy(self, names: Iterable[str], within_s: float) -> bool:
        """For start-up and tests: wait until every named replica is healthy."""
        names = tuple(names)

        async def _all() -> None:
            while not all(self.replicas.get(n) is not None and self.replicas[n].healthy for n in names):
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(_all(), within_s)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        for replica in self.replicas.values():
            await replica.close()
        self.replicas.clear()

    def breakers(self) -> dict[str, Breaker]:
        return {r.breaker.target: r.breaker for r in self.replicas.values()}
