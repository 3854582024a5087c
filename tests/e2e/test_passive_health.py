"""Passive health end to end, with real processes: a replica whose model server fails for a few
seconds (HTTP 503 from the misbehaving upstream behind the `openai` engine, while the replica's own
process stays SERVING) is ejected by its breaker, and once the server recovers it gets traffic again
by itself within its ejection window. `aftershock_replica_routable` says 0 while routing skips it
and 1 once it takes traffic again; `aftershock_replica_healthy` keeps saying what the health watch
sees (SERVING throughout)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ARTIFACTS
from tests.e2e.test_upstream_faults import UpstreamStack, body, upstream_stack
from tests.scrape import metric, scrape

pytestmark = pytest.mark.e2e

RESET_S = 1.0
EJECTION_MAX_S = 3.0
FAULT_S = 6.0  # the model server's outage: long enough for a failed trial and a longer ejection
BACKEND_ENV = {
    "AFTERSHOCK_BACKEND_BREAKER_FAIL_MAX": "2",
    "AFTERSHOCK_BACKEND_BREAKER_RESET_TIMEOUT_S": str(RESET_S),
    "AFTERSHOCK_BACKEND_BREAKER_RESET_TIMEOUT_MAX_S": str(EJECTION_MAX_S),
    "AFTERSHOCK_BACKEND_RETRY_PER_TRY_TIMEOUT_S": "2.0",
    "AFTERSHOCK_BACKEND_REGISTRY_RELOAD_S": "60",
}


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[UpstreamStack]:
    with upstream_stack(ARTIFACTS / "passive-health" / request.node.name, 0.01, BACKEND_ENV) as s:
        yield s


async def test_a_replica_that_recovers_gets_traffic_again_within_its_window(stack: UpstreamStack) -> None:
    assert stack.backend is not None
    port = stack.backend.metrics_port
    victim = stack.inference[0].name
    url = f"{stack.edge_url}/v1/completions"

    def served_by_victim() -> float:
        return metric(scrape(port), "aftershock_upstream_requests_total", replica=victim, code="OK")

    stack.upstreams[0].fault("status", status=503)
    async with httpx.AsyncClient(timeout=30) as client:
        # While its server fails, every request is rescued by the other replica and the victim is
        # ejected; trial calls that meet the still-failing server eject it again, for longer.
        target = f"inference:{victim}"
        faulted_until = time.monotonic() + FAULT_S
        i = 0
        while time.monotonic() < faulted_until:
            resp = await client.post(url, json=body(i, stream=False))
            assert resp.status_code == 200, resp.text
            i += 1
            await asyncio.sleep(0.05)
        samples = scrape(port)
        assert metric(samples, "aftershock_replica_routable", replica=victim) == 0
        assert metric(samples, "aftershock_replica_healthy", replica=victim) == 1, "it never stopped SERVING"
        before = served_by_victim()

        stack.upstreams[0].clear()
        recovered_at = time.monotonic()
        # Its window: at most the capped ejection, then a trial call; a little slack for the CPU.
        window_s = EJECTION_MAX_S + 2.0
        while served_by_victim() == before:
            assert time.monotonic() - recovered_at < window_s, (
                f"the recovered replica got no traffic within {window_s:g} s"
            )
            resp = await client.post(url, json=body(i, stream=False))
            assert resp.status_code == 200, resp.text
            i += 1
            await asyncio.sleep(0.1)
        took = time.monotonic() - recovered_at
        # Back in rotation for good: the breaker closed, and the gauge says routing uses it.
        samples = scrape(port)
        assert metric(samples, "aftershock_breaker_state", target=target) == 0
        # It had failed its trials while the server was down: ejected more than once, each longer.
        opened = metric(samples, "aftershock_breaker_transitions_total", target=target, state="open")
        assert opened >= 2, opened
        assert metric(samples, "aftershock_replica_routable", replica=victim) == 1
        for _ in range(6):
            resp = await client.post(url, json=body(i, stream=False))
            assert resp.status_code == 200, resp.text
            i += 1
    assert served_by_victim() >= before + 3, "it takes its share of traffic, not one trial"
    print(f"recovered replica served again {took:.2f} s after its server recovered")


async def test_routable_gauge_is_zero_while_routing_skips_an_ejected_replica(stack: UpstreamStack) -> None:
    assert stack.backend is not None
    port = stack.backend.metrics_port
    victim = stack.inference[0].name
    stack.upstreams[0].fault("status", status=503)
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(8):
            resp = await client.post(f"{stack.edge_url}/v1/completions", json=body(i, stream=False))
            assert resp.status_code == 200, resp.text
            if metric(scrape(port), "aftershock_breaker_state", target=f"inference:{victim}") == 1:
                break
    samples = scrape(port)
    assert metric(samples, "aftershock_breaker_state", target=f"inference:{victim}") == 1
    assert metric(samples, "aftershock_replica_routable", replica=victim) == 0
    assert metric(samples, "aftershock_replica_routable", replica=stack.inference[1].name) == 1
    assert metric(samples, "aftershock_replica_healthy", replica=victim) == 1
