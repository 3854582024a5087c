"""Replica choice: healthy first, least in-flight wins, tried replicas excluded while others remain."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from aftershock import errors
from aftershock.backend.registry import ModelRegistry, ModelRoute, RegistryConfig, ReplicaConfig
from aftershock.backend.replicas import Replica, ReplicaPool
from aftershock.backend.router import Router
from aftershock.breaker import BreakerConfig
from aftershock.metrics import BackendMetrics, new_registry

CONFIG = RegistryConfig(
    replicas=tuple(ReplicaConfig(name=n, address=f"127.0.0.1:{7000 + i}") for i, n in enumerate("abcd")),
    models=(
        ModelRoute(name="m", replicas=("a", "b", "c")),
        ModelRoute(name="solo", replicas=("d",)),
        ModelRoute(name="half", replicas=("a", "d")),
        ModelRoute(name="tiered", replicas=("a", "b"), fallback_replicas=("d",)),
        ModelRoute(name="chain", replicas=("c",), fallback_models=("tiered", "solo")),
    ),
)


class Fixture:
    def __init__(self) -> None:
        metrics = BackendMetrics(new_registry())
        self.registry = ModelRegistry(None, CONFIG, metrics)
        self.pool = ReplicaPool(metrics)
        # Replicas as the pool keeps them, without health watches: each test sets health itself.
        breaker = BreakerConfig(fail_max=2, reset_timeout_s=60.0)
        for rc in CONFIG.replicas:
            self.pool.replicas[rc.name] = Replica(rc, breaker)

    def router(self) -> Router:
        return Router(self.registry, self.pool)

    def trip(self, name: str) -> None:
        """Open a replica's breaker the way real failures do."""
        for _ in range(2):
            with pytest.raises(RuntimeError), self.pool.replicas[name].breaker.calling():
                raise RuntimeError("replica failed")
        assert not self.pool.replicas[name].breaker.admits()

    def set(self, name: str, *, healthy: bool = True, in_flight: int = 0) -> None:
        replica = self.pool.replicas[name]
        replica.healthy = healthy
        replica.in_flight = in_flight


@pytest.fixture
async def fx() -> AsyncIterator[Fixture]:
    f = Fixture()
    yield f
    await f.pool.close()


async def test_least_in_flight_wins(fx: Fixture) -> None:
    fx.set("a", in_flight=3)
    fx.set("b", in_flight=0)
    fx.set("c", in_flight=1)
    router = fx.router()
    assert [router.pick("m").name for _ in range(4)] == ["b"] * 4
    fx.set("b", in_flight=5)
    assert router.pick("m").name == "c"


async def test_ties_take_turns(fx: Fixture) -> None:
    for name in "abc":
        fx.set(name)
    router = fx.router()
    picks = [router.pick("m").name for _ in range(6)]
    assert set(picks) == {"a", "b", "c"}
    assert all(picks[i] != picks[i + 1] for i in range(5))


async def test_tried_replicas_are_excluded_while_others_remain(fx: Fixture) -> None:
    fx.set("a", in_flight=0)
    fx.set("b", in_flight=1)
    fx.set("c", in_flight=2)
    router = fx.router()
    assert router.pick("m", exclude={"a"}).name == "b"
    assert router.pick("m", exclude={"a", "b"}).name == "c"
    # Everything tried: a tried healthy replica is better than failing outright.
    assert router.pick("m", exclude={"a", "b", "c"}).name == "a"


async def test_unhealthy_replicas_are_skipped(fx: Fixture) -> None:
    fx.set("a", healthy=False)
    fx.set("b", in_flight=7)
    fx.set("c", healthy=False)
    router = fx.router()
    assert {router.pick("m").name for _ in range(3)} == {"b"}
    # Exclusion never brings an unhealthy replica back.
    assert router.pick("m", exclude={"b"}).name == "b"


async def test_replicas_with_an_open_breaker_are_skipped(fx: Fixture) -> None:
    for name in "abc":
        fx.set(name)
    fx.trip("a")
    router = fx.router()
    assert {router.pick("m").name for _ in range(6)} == {"b", "c"}
    fx.set("d")
    fx.trip("d")
    with pytest.raises(errors.Unavailable) as info:
        router.pick("solo")
    assert info.value.error_type == "circuit_open"
    assert info.value.retry_after_s == 1.0


async def test_no_healthy_replica_is_unavailable_with_retry_after(fx: Fixture) -> None:
    fx.set("d", healthy=False)
    with pytest.raises(errors.Unavailable) as info:
        fx.router().pick("solo")
    err = info.value
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert err.error_type == "no_healthy_replica"
    assert err.retry_after_s == 1.0
    assert "solo" in err.message


async def test_unknown_model_is_not_found(fx: Fixture) -> None:
    with pytest.raises(errors.ModelNotFound):
        fx.router().pick("nope")
    with pytest.raises(errors.ModelNotFound):
        fx.router().replicas_of("nope")


async def test_replicas_missing_from_the_pool_are_ignored(fx: Fixture) -> None:
    await fx.pool.replicas.pop("d").close()
    fx.set("a")
    router = fx.router()
    assert [r.name for r in router.replicas_of("half")] == ["a"]
    assert router.pick("half").name == "a"


async def test_fallback_tier_only_when_the_primary_pool_cannot_serve(fx: Fixture) -> None:
    for name in "abd":
        fx.set(name)
    fx.set("d", in_flight=0)
    fx.set("a", in_flight=7)
    fx.set("b", in_flight=9)
    router = fx.router()
    # Busy primaries still win over an idle fallback tier.
    assert {router.route("tiered").reason for _ in range(4)} <= {"least_loaded"}
    assert router.route("tiered").replica.name == "a"
    fx.set("a", healthy=False)
    fx.trip("b")
    route = router.route("tiered")
    assert (route.replica.name, route.model, route.reason) == ("d", "tiered", "fallback_tier")


async def test_fallback_models_serve_when_the_model_has_no_replica(fx: Fixture) -> None:
    for name in "abcd":
        fx.set(name)
    router = fx.router()
    assert router.route("chain").model == "chain"
    fx.set("c", healthy=False)
    route = router.route("chain")
    assert (route.model, route.reason) == ("tiered", "fallback_model")
    fx.set("a", healthy=False)
    fx.set("b", healthy=False)
    # The fallback model's own fallback tier counts before the next model in the chain.
    assert (router.route("chain").replica.name, router.route("chain").model) == ("d", "tiered")
    fx.set("d", healthy=False)
    with pytest.raises(errors.Unavailable):
        router.route("chain")


async def test_a_prefix_key_keeps_its_replica(fx: Fixture) -> None:
    for name in "abc":
        fx.set(name)
    router = fx.router()
    homes = {router.route("m", key=key).replica.name for key in (11, 11, 11)}
    assert len(homes) == 1
    spread = {router.route("m", key=k).replica.name for k in range(0, 2**64, 2**58)}
    assert spread == {"a", "b", "c"}


def test_registry_rejects_unknown_or_self_fallbacks() -> None:
    replicas = (ReplicaConfig(name="a", address="127.0.0.1:1"),)
    with pytest.raises(ValueError, match="unknown models"):
        RegistryConfig(
            replicas=replicas, models=(ModelRoute(name="m", replicas=("a",), fallback_models=("x",)),)
        )
    with pytest.raises(ValueError, match="itself"):
        RegistryConfig(
            replicas=replicas, models=(ModelRoute(name="m", replicas=("a",), fallback_models=("m",)),)
        )
    with pytest.raises(ValueError, match="unknown replicas"):
        RegistryConfig(
            replicas=replicas, models=(ModelRoute(name="m", replicas=("a",), fallback_replicas=("z",)),)
        )


def test_fallback_chain_is_breadth_first_and_cuts_cycles() -> None:
    replicas = (ReplicaConfig(name="a", address="127.0.0.1:1"),)
    config = RegistryConfig(
        replicas=replicas,
        models=(
            ModelRoute(name="m", replicas=("a",), fallback_models=("n", "o")),
            ModelRoute(name="n", replicas=("a",), fallback_models=("m", "p")),
            ModelRoute(name="o", replicas=("a",)),
            ModelRoute(name="p", replicas=("a",)),
        ),
    )
    assert config.fallback_chain("m") == ("m", "n", "o", "p")
