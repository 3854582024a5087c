"""Inference replicas: one channel each, health watched over grpc.health.v1, model limits learned.

Whether routing sends a replica new requests is decided by three things, each owning one question:
the health watch (is the process up and SERVING?), the replica's breaker (has it been failing
requests? it ejects the replica, for longer after each ejection in a row, then lets trial calls
decide), and a Retry-After the replica itself asked for (not before then). `Replica.routable`
combines them, and `aftershock_replica_routable` exports exactly that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from functools import partial

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aftershock import errors
from aftershock.backend.breaker_metrics import BreakerMetrics
from aftershock.backend.placement import EngineLoad
from aftershock.backend.registry import RegistryConfig, ReplicaConfig
from aftershock.breaker import Breaker, BreakerConfig, BreakerListener
from aftershock.clock import SYSTEM_CLOCK, Clock
from aftershock.metrics import BackendMetrics
from aftershock.rpc.client import insecure_channel
from aftershock.v1 import generation_pb2 as pb
from aftershock.v1 import inference_pb2_grpc

log = logging.getLogger(__name__)

INFERENCE_SERVICE = "aftershock.v1.Inference"
# A replica that keeps failing after its trials stays out 10 s, 20 s, ... up to a minute.
REPLICA_EJECTION_MAX_S = 60.0
REPLICA_BREAKER = BreakerConfig(reset_timeout_max_s=REPLICA_EJECTION_MAX_S)


class Replica:
    def __init__(
        self,
        config: ReplicaConfig,
        breaker: BreakerConfig | None = None,
        is_failure: Callable[[BaseException], bool] = lambda exc: True,
        listeners: Sequence[BreakerListener] = (),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.breaker = Breaker(
            f"inference:{config.name}",
            breaker or REPLICA_BREAKER,
            is_failure=is_failure,
            listeners=listeners,
            clock=clock,
        )
        self.name = config.name
        self.address = config.address
        self.channel = insecure_channel(config.address)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)
        self.healthy = False
        self.in_flight = 0
        # What the engine last reported (running, waiting, KV cache usage); see placement.
        self.load = EngineLoad()
        # Until when placement passes this replica over: it lost a hedge race (see hedging.py).
        self.slow_until = 0.0
        self.models: dict[str, pb.ModelInfo] = {}
        self.not_before = float("-inf")  # on the clock: the replica asked not to be called before
        self._clock = clock
        self._watch: asyncio.Task[None] | None = None

    def hold_off(self, seconds: float) -> None:
        """The replica answered with a Retry-After: no new request goes there for that long."""
        self.not_before = max(self.not_before, self._clock.now() + seconds)

    def waiting_s(self, now: float) -> float:
        """How long until the replica's Retry-After has passed (0 when it has)."""
        return max(0.0, self.not_before - now)

    def routable(self, now: float) -> bool:
        """Would routing send this replica a new request now?"""
        return self.healthy and self.waiting_s(now) == 0 and self.breaker.admits()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        await self.channel.close()


def every_replica_waiting(
    model: str, replicas: Sequence[Replica], now: float
) -> errors.ResourceExhausted | None:
    """When no replica is routable and a healthy one is only waiting out its Retry-After: the error
    that passes the shortest such wait on to the caller (None when no replica is waiting)."""
    waits = [w for r in replicas if r.healthy and (w := r.waiting_s(now)) > 0]
    if not waits:
        return None
    return errors.ResourceExhausted(
        f"Every replica of model '{model}' asked to be called again later.",
        error_type="replicas_waiting",
        retry_after_s=min(waits),
    )


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
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._metrics = metrics
        self.clock = clock
        self._breaker = breaker or REPLICA_BREAKER
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
                replica = Replica(
                    rc, self._breaker, self._is_failure, tuple(self.breaker_listeners), clock=self.clock
                )
                self.replicas[name] = replica
                replica._watch = asyncio.create_task(self._watch(replica), name=f"health-{name}")
        self._publish()

    def _publish(self) -> None:
        gauge, routable = self._metrics.replica_healthy, self._metrics.replica_routable
        current: set[tuple[str, str]] = set()
        for route in self._config.models:
            for name in route.replicas:
                replica = self.replicas.get(name)
                gauge.labels(route.name, name).set(1 if replica is not None and replica.healthy else 0)
                # Read at scrape time: an ejection or a Retry-After ends with no event to publish on.
                routable.labels(route.name, name).set_function(partial(self._routable, name))
                current.add((route.name, name))
        # A route removed from the registry must not keep reporting a replica as down.
        for stale in self._published - current:
            gauge.remove(*stale)
            routable.remove(*stale)
        self._published = current

    def _routable(self, name: str) -> float:
        replica = self.replicas.get(name)
        return 1.0 if replica is not None and replica.routable(self.clock.now()) else 0.0

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
