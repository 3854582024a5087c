"""The replica set against real sim inference servers over gRPC: health followed through
grpc.health.v1, model limits learned, configuration changes applied, metrics kept honest."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aftershock.backend.registry import ModelRoute, RegistryConfig, ReplicaConfig
from aftershock.backend.replicas import ReplicaPool
from aftershock.breaker import OPEN, BreakerConfig
from aftershock.inference.sim_config import SimModelConfig
from aftershock.metrics import BackendMetrics, new_registry
from prometheus_client import CollectorRegistry

from tests.inproc import RunningInference, start_inference, wait_until


class Env:
    def __init__(self, a: RunningInference, b: RunningInference) -> None:
        self.a, self.b = a, b
        self.registry: CollectorRegistry = new_registry()
        self.pool = ReplicaPool(
            BackendMetrics(self.registry),
            breaker=BreakerConfig(fail_max=1, reset_timeout_s=60.0),
            retry_min_s=0.05,
            retry_max_s=0.2,
        )

    def config(self, **routes: tuple[str, ...]) -> RegistryConfig:
        replicas = (
            ReplicaConfig(name="a", address=self.a.address),
            ReplicaConfig(name="b", address=self.b.address),
        )
        return RegistryConfig(
            replicas=replicas, models=tuple(ModelRoute(name=m, replicas=r) for m, r in routes.items())
        )

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    models = (SimModelConfig(name="m", max_model_len=1024, max_output_tokens=77),)
    a = await start_inference(models, name="a")
    b = await start_inference(models, name="b")
    e = Env(a, b)
    try:
        yield e
    finally:
        await e.pool.close()
        for r in (e.a, e.b):
            await r.service.stop(0)


async def test_replicas_become_healthy_and_their_models_are_learned(env: Env) -> None:
    await env.pool.apply(env.config(m=("a", "b")))
    assert await env.pool.wait_healthy(["a", "b"], within_s=10)
    a = env.pool.get("a")
    assert a is not None and a.models["m"].max_output_tokens == 77 and a.models["m"].max_model_len == 1024
    assert env.sample("aftershock_replica_healthy", model="m", replica="a") == 1
    assert env.sample("aftershock_replica_healthy", model="m", replica="b") == 1
    assert env.pool.get("nope") is None


async def test_a_replica_that_stops_is_marked_down_and_comes_back(env: Env) -> None:
    await env.pool.apply(env.config(m=("a", "b")))
    assert await env.pool.wait_healthy(["a", "b"], within_s=10)
    b = env.pool.get("b")
    assert b is not None
    await env.b.service.stop(0)  # NOT_SERVING, then the server goes
    await wait_until(lambda: not b.healthy, what="b marked unhealthy")
    assert env.sample("aftershock_replica_healthy", model="m", replica="b") == 0
    assert env.pool.get("a") is not None and env.pool.get("a").healthy  # type: ignore[union-attr]


async def test_apply_keeps_unchanged_replicas_and_drops_removed_ones(env: Env) -> None:
    await env.pool.apply(env.config(m=("a", "b"), other=("b",)))
    assert await env.pool.wait_healthy(["a", "b"], within_s=10)
    a_before = env.pool.get("a")
    b = env.pool.get("b")
    assert b is not None
    with pytest.raises(ConnectionError), b.breaker.calling():  # one failure opens it (fail_max=1)
        raise ConnectionError("down")
    assert b.breaker.state == OPEN
    assert env.sample("aftershock_breaker_state", target="inference:b") == 1
    assert env.sample("aftershock_replica_routable", model="m", replica="b") == 0  # ejected
    assert env.sample("aftershock_replica_healthy", model="m", replica="b") == 1  # yet SERVING
    # b leaves the configuration: its channel, health gauge and breaker series go with it.
    only_a = RegistryConfig(
        replicas=(ReplicaConfig(name="a", address=env.a.address),),
        models=(ModelRoute(name="m", replicas=("a",)),),
    )
    await env.pool.apply(only_a)
    assert env.pool.get("a") is a_before  # unchanged: same channel, same breaker, same health
    assert env.pool.get("b") is None
    assert env.sample("aftershock_replica_healthy", model="m", replica="b") is None
    assert env.sample("aftershock_replica_healthy", model="other", replica="b") is None
    assert env.sample("aftershock_replica_routable", model="m", replica="b") is None
    assert env.sample("aftershock_replica_routable", model="m", replica="a") == 1
    assert env.sample("aftershock_breaker_state", target="inference:b") is None
    assert set(env.pool.breakers()) == {"inference:a"}


async def test_a_changed_address_gets_a_new_replica(env: Env) -> None:
    await env.pool.apply(env.config(m=("a",)))
    assert await env.pool.wait_healthy(["a"], within_s=10)
    old = env.pool.get("a")
    moved = RegistryConfig(
        replicas=(ReplicaConfig(name="a", address=env.b.address),),
        models=(ModelRoute(name="m", replicas=("a",)),),
    )
    await env.pool.apply(moved)
    new = env.pool.get("a")
    assert new is not None and new is not old and new.address == env.b.address
    assert await env.pool.wait_healthy(["a"], within_s=10)


async def test_breaker_listeners_hear_every_replica(env: Env) -> None:
    heard: list[tuple[str, str]] = []

    class Recorder:
        def state_changed(self, target: str, state: str, *, changed: bool) -> None:
            if changed:
                heard.append((target, state))

        def forgotten(self, target: str) -> None:
            heard.append((target, "forgotten"))

    env.pool.breaker_listeners.append(Recorder())
    await env.pool.apply(env.config(m=("a", "b")))
    for name in ("a", "b"):
        replica = env.pool.get(name)
        assert replica is not None
        with pytest.raises(ConnectionError), replica.breaker.calling():
            raise ConnectionError("down")
    assert heard == [("inference:a", OPEN), ("inference:b", OPEN)]
