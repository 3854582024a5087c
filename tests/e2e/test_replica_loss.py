"""A replica killed while idle is routed around; readiness follows replica health."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from aftershock.stack import Stack

from tests.polling import wait_for
from tests.scrape import Samples, metric, scrape

pytestmark = pytest.mark.e2e


def test_replica_killed_while_idle_is_routed_around(stack: Stack) -> None:
    victim = stack.inference[0]
    stack.kill(victim, signal.SIGKILL)
    victim.popen.wait(5)
    with httpx.Client(base_url=stack.edge_url, timeout=10) as client:
        # Requests right after the kill, before health has necessarily noticed, must all succeed.
        for i in range(20):
            resp = client.post(
                "/v1/completions", json={"model": "sim-fast", "prompt": f"after kill {i}", "max_tokens": 3}
            )
            assert resp.status_code == 200, resp.text

        def victim_unhealthy() -> Samples | None:
            samples = scrape(stack.backend.metrics_port)  # type: ignore[union-attr]
            return (
                samples if metric(samples, "aftershock_replica_healthy", replica=victim.name) == 0 else None
            )

        samples = wait_for(victim_unhealthy, 5, f"{victim.name} marked unhealthy", every_s=0.1)
        assert metric(samples, "aftershock_replica_healthy", replica=victim.name, model="sim-fast") == 0
        assert (
            metric(samples, "aftershock_replica_healthy", replica=stack.inference[1].name, model="sim-fast")
            == 1
        )
        # One replica per model is still reachable, so the edge stays ready.
        assert client.get("/readyz").status_code == 200
        time.sleep(2.1)  # /v1/models is cached for models_cache_s (2 s)
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert models["sim-fast"]["ready_replicas"] == 1


def test_all_replicas_gone_is_503_and_not_ready(stack: Stack) -> None:
    for proc in stack.inference:
        stack.kill(proc, signal.SIGKILL)
        proc.popen.wait(5)
    with httpx.Client(base_url=stack.edge_url, timeout=10) as client:
        resp = client.post(
            "/v1/completions", json={"model": "sim-fast", "prompt": "anyone?", "max_tokens": 3}
        )
        assert resp.status_code == 503
        assert resp.headers["retry-after"]
        assert resp.json()["error"]["type"] == "server_error"
        wait_for(lambda: client.get("/readyz").status_code == 503, 5, "/readyz is 503", every_s=0.1)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "no reachable replica" in ready.json()["detail"]
