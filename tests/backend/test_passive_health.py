"""Passive health over real gRPC between two real sim replicas, on an injected clock: a replica
ejected by its breaker for failing requests comes back by itself (for longer after each failed
trial), a replica's Retry-After keeps it out for that long, and `aftershock_replica_routable` says
what routing does while `aftershock_replica_healthy` keeps saying what the health watch sees.

The sims' status-level faults stand in for a replica in trouble: on replica `a`, model `flaky`
always fails (INTERNAL) and model `busy` always answers RESOURCE_EXHAUSTED asking for a 1 s hold;
`jammed` does that on both replicas. `m` works everywhere."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
from aftershock import errors
from aftershock.backend.attempt import is_replica_failure
from aftershock.backend.failover import Failover
from aftershock.backend.registry import ModelRegistry, ModelRoute, RegistryConfig, ReplicaConfig
from aftershock.backend.replicas import ReplicaPool
from aftershock.backend.retry import RetryConfig
from aftershock.backend.router import Router
from aftershock.breaker import BreakerConfig
from aftershock.clock import FakeClock
from aftershock.inference.sim_config import SimModelConfig
from aftershock.metrics import BackendMetrics, new_registry
from prometheus_client import CollectorRegistry

from tests.inproc import RunningInference, generate_request, start_inference

RESET_S = 10.0
ALWAYS_FAILS = {"fault_error_rate": 1.0}
ALWAYS_BUSY = {"fault_overloaded_rate": 1.0, "fault_overloaded_hold_s": 1.0}


def models(**faults: dict[str, float]) -> tuple[SimModelConfig, ...]:
    return tuple(SimModelConfig(name=n, **faults.get(n, {})) for n in ("m", "flaky", "busy", "jammed"))


class Env:
    def __init__(self, a: RunningInference, b: RunningInference) -> None:
        self.sims = {"a": a, "b": b}
        self.clock = FakeClock()
        self.prom: CollectorRegistry = new_registry()
        metrics = BackendMetrics(self.prom)
        self.config = RegistryConfig(
            replicas=tuple(ReplicaConfig(name=n, address=s.address) for n, s in self.sims.items()),
            models=tuple(ModelRoute(name=m, replicas=("a", "b")) for m in ("m", "flaky", "busy", "jammed")),
        )
        self.pool = ReplicaPool(
            metrics,
            breaker=BreakerConfig(fail_max=2, reset_timeout_s=RESET_S, reset_timeout_max_s=3 * RESET_S),
            is_failure=is_replica_failure,
            clock=self.clock,
        )
        self.router = Router(ModelRegistry(None, self.config, metrics), self.pool)
        self.failover = Failover(self.router, metrics, RetryConfig(), self.clock, random.Random(7))

    async def generate(self, model: str, seed: int = 1) -> str:
        """One request through the failover relay; returns the replica that answered."""
        out = [m async for m in self.failover.relay(generate_request(model, seed=seed, max_tokens=2), None)]
        return out[-1].replica

    def gauge(self, name: str, replica: str, model: str = "m") -> float | None:
        return self.prom.get_sample_value(f"aftershock_replica_{name}", {"model": model, "replica": replica})

    def upstream(self, replica: str, code: str) -> float:
        value = self.prom.get_sample_value(
            "aftershock_upstream_requests_total", {"replica": replica, "code": code}
        )
        return value or 0.0

    async def picks(self, n: int = 8) -> set[str]:
        return {self.router.pick("m").name for _ in range(n)}


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    a = await start_inference(models(flaky=ALWAYS_FAILS, busy=ALWAYS_BUSY, jammed=ALWAYS_BUSY), name="a")
    b = await start_inference(models(jammed=ALWAYS_BUSY), name="b")
    e = Env(a, b)
    await e.pool.apply(e.config)
    try:
        assert await e.pool.wait_healthy(["a", "b"], within_s=10)
        yield e
    finally:
        await e.pool.close()
        for sim in e.sims.values():
            await sim.service.stop(0)


async def eject_a(env: Env) -> None:
    """Fail requests until replica a's breaker ejects it once more (b never fails `flaky`, a always
    does): the first ejection, or the one after a failed trial."""
    breaker = env.pool.replicas["a"].breaker
    before = breaker.openings
    for i in range(20):
        try:
            await env.generate("flaky", seed=i)
        except errors.Internal:
            pass
        if breaker.openings > before:
            assert breaker.state == "open"
            return
    raise AssertionError("replica a was never ejected")


async def test_an_ejected_replica_comes_back_by_itself_after_its_ejection_time(env: Env) -> None:
    await eject_a(env)
    assert await env.picks() == {"b"}
    assert env.gauge("routable", "a") == 0, "routing skips a: the gauge must say so"
    assert env.gauge("healthy", "a") == 1, "the process is fine: the health watch still says SERVING"
    env.clock.advance(RESET_S - 0.1)
    assert env.gauge("routable", "a") == 0
    env.clock.advance(0.1)
    assert env.gauge("routable", "a") == 1, "the ejection is over: a takes (trial) traffic again"
    served = {await env.generate("m", seed=i) for i in range(4)}
    assert "a" in served
    assert env.pool.replicas["a"].breaker.state == "closed"
    assert await env.picks() == {"a", "b"}


async def test_a_failed_trial_ejects_it_for_longer_and_a_good_one_resets_that(env: Env) -> None:
    await eject_a(env)
    for openings in (1, 2, 3, 3):  # capped at 3 x the reset timeout
        env.clock.advance(openings * RESET_S - 0.1)
        assert env.gauge("routable", "a") == 0, f"ejection {openings} ended early"
        env.clock.advance(0.1)
        assert env.gauge("routable", "a") == 1
        await eject_a(env)  # the trial fails
    env.clock.advance(3 * RESET_S)
    while "a" not in {await env.generate("m")}:
        pass
    breaker = env.pool.replicas["a"].breaker
    assert breaker.state == "closed" and breaker.openings == 0
    await eject_a(env)
    env.clock.advance(RESET_S)
    assert env.gauge("routable", "a") == 1, "after a good trial the next ejection starts from the base"


async def test_a_retry_after_keeps_that_replica_out_for_that_long(env: Env) -> None:
    while env.upstream("a", "RESOURCE_EXHAUSTED") == 0:
        assert await env.generate("busy") == "b"  # a's 429 is retried on b
    assert env.upstream("a", "RESOURCE_EXHAUSTED") == 1
    assert (
        env.prom.get_sample_value(
            "aftershock_replica_retry_after_total", {"replica": "a", "code": "RESOURCE_EXHAUSTED"}
        )
        == 1
    )
    held_until = env.pool.replicas["a"].not_before
    assert held_until > env.clock.now()
    assert await env.picks() == {"b"}
    assert env.gauge("routable", "a") == 0 and env.gauge("healthy", "a") == 1
    assert env.pool.replicas["a"].breaker.state == "closed", "one 429 is no reason to eject it"
    env.clock.advance(held_until - env.clock.now())
    assert env.gauge("routable", "a") == 1
    assert await env.picks() == {"a", "b"}


async def test_every_replica_waiting_fails_at_once_with_the_shortest_wait(env: Env) -> None:
    with pytest.raises(errors.ResourceExhausted) as info:
        await env.generate("jammed")
    assert info.value.error_type == "replicas_waiting"
    assert env.upstream("a", "RESOURCE_EXHAUSTED") + env.upstream("b", "RESOURCE_EXHAUSTED") == 2
    waits = [r.not_before - env.clock.now() for r in env.pool.replicas.values()]
    assert info.value.retry_after_s == pytest.approx(min(waits))
    assert 0 < min(waits) <= 1.0  # the sim asks for 1 s; the retry's backoff used some of it
    # While both wait, a request is refused without a try reaching either replica.
    with pytest.raises(errors.ResourceExhausted):
        await env.generate("m")
    assert env.upstream("a", "OK") + env.upstream("b", "OK") == 0
    env.clock.advance(min(waits))
    assert await env.generate("m") in {"a", "b"}


async def test_a_failure_without_retry_after_holds_nothing(env: Env) -> None:
    while env.upstream("a", "INTERNAL") == 0:
        try:
            await env.generate("flaky")
        except errors.Internal:
            pass
    assert env.pool.replicas["a"].waiting_s(env.clock.now()) == 0
    assert env.gauge("routable", "a") == 1, "one failure is below fail_max: a stays in rotation"
    assert (
        env.prom.get_sample_value(
            "aftershock_replica_retry_after_total", {"replica": "a", "code": "INTERNAL"}
        )
        is None
    )
