"""The retry budget end to end: replicas that are alive but refuse every request (the sim's
status-level fault injection, RESOURCE_EXHAUSTED), so that every request wants retries and the
budget is what stops them. Retries counted by the backend's real /metrics stay within
ratio x requests + min_per_s x window, the budget-exhausted counter rises, and the same check is
shown to reject a budget that is too loose (the negative control)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from aftershock.stack import Stack, StackConfig

from tests.conftest import ARTIFACTS
from tests.scrape import metric, scrape

pytestmark = pytest.mark.e2e

MODEL = "sim-refusing"
REQUESTS = 100
RATIO = 0.2
MIN_PER_S = 0.25
WINDOW_S = 40.0  # longer than the run: nothing leaves the window, so the bound is exact
MAX_ATTEMPTS = 3  # so each request asks for two retries: demand is twice the requests


def backend_env(ratio: float) -> dict[str, str]:
    return {
        "AFTERSHOCK_BACKEND_RETRY_BUDGET_RATIO": str(ratio),
        "AFTERSHOCK_BACKEND_RETRY_BUDGET_MIN_PER_S": str(MIN_PER_S),
        "AFTERSHOCK_BACKEND_RETRY_BUDGET_WINDOW_S": str(WINDOW_S),
        "AFTERSHOCK_BACKEND_RETRY_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "AFTERSHOCK_BACKEND_RETRY_BACKOFF_BASE_S": "0.001",
        # Breakers stay closed: the budget alone must hold the retries back.
        "AFTERSHOCK_BACKEND_BREAKER_FAIL_MAX": "100000",
        "AFTERSHOCK_BACKEND_REGISTRY_RELOAD_S": "60",
    }


@dataclass(frozen=True)
class Storm:
    requests: int
    retries: float
    exhausted: float
    tries: float
    statuses: set[int]
    elapsed_s: float

    @property
    def bound(self) -> float:
        """What the configured budget allows: ratio x requests + min_per_s x window."""
        return RATIO * self.requests + MIN_PER_S * WINDOW_S


def storm(tmp_path: Path, name: str, ratio: float) -> Storm:
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({"models": [{"name": MODEL, "fault_overloaded_rate": 1.0}]}))
    config = StackConfig(
        replicas=2,
        models_file=models,
        log_dir=ARTIFACTS / "retry-budget" / name,
        shutdown_grace_s=2,
        env={"backend": backend_env(ratio)},
    )
    with Stack(config) as stack:
        stack.start()
        url = f"{stack.edge_url}/v1/completions"

        async def fire() -> tuple[set[int], float]:
            started = time.monotonic()
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=10)) as client:
                sem = asyncio.Semaphore(10)

                async def one(i: int) -> int:
                    async with sem:
                        body = {"model": MODEL, "prompt": f"storm {i}", "max_tokens": 2}
                        return (await client.post(url, json=body)).status_code

                codes = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
            return set(codes), time.monotonic() - started

        statuses, elapsed = asyncio.run(fire())
        assert stack.backend is not None
        samples = scrape(stack.backend.metrics_port)
    return Storm(
        requests=REQUESTS,
        retries=metric(samples, "aftershock_retries_total", model=MODEL),
        exhausted=metric(samples, "aftershock_retry_budget_exhausted_total", model=MODEL),
        tries=metric(samples, "aftershock_upstream_requests_total"),
        statuses=statuses,
        elapsed_s=elapsed,
    )


def assert_within_budget(s: Storm) -> None:
    assert s.retries <= s.bound, f"{s.retries} retries for {s.requests} requests; the budget allows {s.bound}"


def test_retries_against_refusing_replicas_stay_within_the_budget(tmp_path: Path) -> None:
    s = storm(tmp_path, "budget", RATIO)
    assert s.statuses == {429}, s.statuses  # every replica refuses: the client is told to come back
    assert s.elapsed_s < WINDOW_S
    assert_within_budget(s)
    # Not vacuous: retries really happened, up to what the budget allows (demand was 2 per request).
    assert s.retries >= 0.9 * s.bound, (s.retries, s.bound)
    assert s.exhausted >= s.requests - s.bound, s.exhausted
    # Amplification seen by the replicas: one try per request plus the retries, no more.
    assert s.tries == s.requests + s.retries, (s.tries, s.requests, s.retries)
    print(
        f"retry budget: {s.retries:.0f} retries (bound {s.bound:.0f}), {s.exhausted:.0f} refused by the "
        f"budget, {s.tries / s.requests:.2f} tries per request"
    )


def test_negative_control_a_loose_budget_fails_the_bound(tmp_path: Path) -> None:
    s = storm(tmp_path, "loose-budget", 1.0)  # ratio 1.0: what a budget that does not bind looks like
    assert s.retries > 0
    print(f"loose budget: {s.retries:.0f} retries against a bound of {s.bound:.0f}")
    with pytest.raises(AssertionError):
        assert_within_budget(s)
