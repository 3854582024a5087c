"""Faults at the model server itself, end to end: two inference replicas with the `openai` engine in
front of two instances of the misbehaving upstream (aftershock.chaos.upstream), a backend and an
edge, all real processes. Each fault ends in a resumed stream or a clear error: never a cut answer
presented as complete ([DONE] after a cut) and never a wait past the request's deadline."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aftershock.inference.sim_tokens import expected_text
from aftershock.proc import Proc
from aftershock.stack import Stack, StackConfig

from tests.conftest import ARTIFACTS
from tests.e2e.sse_client import content_of, events
from tests.scrape import metric, scrape
from tests.upstream_proc import UpstreamProc, start_upstream

pytestmark = pytest.mark.e2e

MODEL = "up-chat"
BACKEND_ENV = {
    "AFTERSHOCK_BACKEND_BREAKER_FAIL_MAX": "50",
    "AFTERSHOCK_BACKEND_RETRY_PER_TRY_TIMEOUT_S": "1.0",
    # Above the engine's idle timeout, so the engine (which knows why) reports a stall.
    "AFTERSHOCK_BACKEND_RETRY_STREAM_IDLE_TIMEOUT_S": "4.0",
    "AFTERSHOCK_BACKEND_REGISTRY_RELOAD_S": "60",
}
INFERENCE_ENV = {
    "AFTERSHOCK_INFERENCE_ENGINE": "openai",
    "AFTERSHOCK_INFERENCE_OPENAI_STREAM_IDLE_TIMEOUT_S": "1.0",
    # The test upstream's text is a function of (model, prompt, seed): declared so, a seeded stream
    # may resume on the other replica (an undeclared upstream's streams end with an error instead).
    "AFTERSHOCK_INFERENCE_OPENAI_REPRODUCIBLE": "true",
}


class UpstreamStack(Stack):
    """The local stack with replica i relaying to upstream i."""

    def __init__(self, config: StackConfig, upstreams: list[UpstreamProc]) -> None:
        super().__init__(config)
        self.upstreams = upstreams

    def _spawn(self, name: str, service: str, args: list[str], port: int, metrics_port: int) -> Proc:
        if service != "inference":
            return super()._spawn(name, service, args, port, metrics_port)
        index = int(name.rsplit("-", 1)[1])
        env = {**INFERENCE_ENV, "AFTERSHOCK_INFERENCE_OPENAI_BASE_URL": f"{self.upstreams[index].url}/v1"}
        base = self.config
        self.config = dataclasses.replace(base, env={**base.env, "inference": env})
        try:
            return super()._spawn(name, service, args, port, metrics_port)
        finally:
            self.config = base


@contextlib.contextmanager
def upstream_stack(log_dir: Path, itl_s: float, backend_env: dict[str, str]) -> Iterator[UpstreamStack]:
    """Two openai-engine replicas, each in front of its own upstream, behind a backend and an edge."""
    log_dir.mkdir(parents=True, exist_ok=True)
    upstreams = [start_upstream([MODEL], itl_s=itl_s, log=log_dir / f"upstream-{i}.log") for i in range(2)]
    config = StackConfig(replicas=2, log_dir=log_dir, shutdown_grace_s=2, env={"backend": backend_env})
    stack = UpstreamStack(config, upstreams)
    try:
        stack.start(models=[MODEL])
        wait_every_replica_healthy(stack)
        yield stack
    finally:
        for proc in stack.procs():
            if proc.alive():
                proc.popen.send_signal(signal.SIGCONT)
        stack.stop()
        for up in upstreams:
            up.stop()


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[UpstreamStack]:
    with upstream_stack(ARTIFACTS / "upstream-faults" / request.node.name, 0.02, BACKEND_ENV) as s:
        yield s


def wait_every_replica_healthy(stack: Stack, within_s: float = 20.0) -> None:
    """The edge is ready with one replica per model; these tests need both in rotation from the
    start (with one still connecting, a try that fails with Retry-After has nowhere else to go)."""
    assert stack.backend is not None
    deadline = time.monotonic() + within_s
    while metric(scrape(stack.backend.metrics_port), "aftershock_replica_healthy") < len(stack.inference):
        assert time.monotonic() < deadline, "not every replica became healthy"
        time.sleep(0.05)


def body(i: int, *, seeded: bool = True, stream: bool = True, max_tokens: int = 12) -> dict[str, Any]:
    out: dict[str, Any] = {"model": MODEL, "prompt": f"fault {i}", "max_tokens": max_tokens, "stream": stream}
    out.update({"seed": i} if seeded else {"temperature": 0.7})
    return out


async def stream(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> tuple[str, list[Any], bool]:
    """(text, error events, whether [DONE] came)."""
    text: list[str] = []
    errs: list[Any] = []
    done = False
    async with client.stream("POST", url, json=payload) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for ev in events(resp):
            if ev == "[DONE]":
                done = True
            elif isinstance(ev, dict) and "error" in ev:
                errs.append(ev["error"])
            elif isinstance(ev, dict):
                text.append(content_of(ev))
    return "".join(text), errs, done


async def until_faulted(stack: UpstreamStack, payloads: Iterator[dict[str, Any]], check: Any) -> int:
    """Send requests one by one (each checked) until upstream 0 has met its fault; returns how many."""
    url = f"{stack.edge_url}/v1/completions"
    async with httpx.AsyncClient(timeout=30) as client:
        for n, payload in enumerate(payloads, 1):
            await check(client, url, payload)
            if stack.upstreams[0].stats()["faulted"] >= 1:
                return n
    raise AssertionError("upstream 0 never met its fault")


def backend_metric(stack: Stack, name: str, **labels: str) -> float:
    assert stack.backend is not None
    return metric(scrape(stack.backend.metrics_port), name, **labels)


async def test_upstream_5xx_before_the_first_token_is_retried_on_the_other_replica(
    stack: UpstreamStack,
) -> None:
    stack.upstreams[0].fault("status", status=500)

    async def check(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> None:
        resp = await client.post(url, json=payload)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["text"] == expected_text(
            MODEL, payload["prompt"], payload["seed"], 12
        )

    await until_faulted(stack, (body(i, stream=False) for i in range(8)), check)
    assert backend_metric(stack, "aftershock_retries_total", code="UNAVAILABLE") >= 1


@pytest.mark.parametrize("kind", ["malformed", "cut"])
async def test_seeded_stream_broken_mid_answer_resumes_on_the_other_replica(
    stack: UpstreamStack, kind: str
) -> None:
    stack.upstreams[0].fault(kind, after_tokens=4)

    async def check(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> None:
        text, errs, done = await stream(client, url, payload)
        assert errs == [] and done
        assert text == expected_text(MODEL, payload["prompt"], payload["seed"], 12)

    await until_faulted(stack, (body(i) for i in range(8)), check)
    assert backend_metric(stack, "aftershock_failovers_total", phase="mid_stream", outcome="resumed") >= 1


@pytest.mark.parametrize(
    ("kind", "says"), [("cut", "before the answer was complete"), ("malformed", "malformed")]
)
async def test_unseeded_stream_broken_mid_answer_ends_in_an_error_never_done(
    stack: UpstreamStack, kind: str, says: str
) -> None:
    for up in stack.upstreams:
        up.fault(kind, after_tokens=4)
    async with httpx.AsyncClient(timeout=30) as client:
        text, errs, done = await stream(client, f"{stack.edge_url}/v1/completions", body(1, seeded=False))
    assert text, "the fault strikes after the first tokens"
    assert len(errs) == 1 and says in errs[0]["message"], errs
    assert not done, "a cut answer must never end with [DONE]"


async def test_unseeded_stream_that_stalls_mid_answer_gets_an_accurate_error_in_time(
    stack: UpstreamStack,
) -> None:
    for up in stack.upstreams:
        up.fault("stall_after", after_tokens=3, stall_s=60)
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as client:
        text, errs, done = await stream(client, f"{stack.edge_url}/v1/completions", body(2, seeded=False))
    elapsed = time.monotonic() - started
    assert text and not done
    assert len(errs) == 1 and "stalled mid-answer" in errs[0]["message"], errs
    assert "did not start answering" not in errs[0]["message"]
    assert elapsed < 4.0, elapsed  # the engine's idle timeout (1 s), far from the 60 s stall


async def test_seeded_stream_that_stalls_mid_answer_resumes(stack: UpstreamStack) -> None:
    stack.upstreams[0].fault("stall_after", after_tokens=3, stall_s=60)

    async def check(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> None:
        text, errs, done = await stream(client, url, payload)
        assert errs == [] and done
        assert text == expected_text(MODEL, payload["prompt"], payload["seed"], 12)

    await until_faulted(stack, (body(i) for i in range(8)), check)
    assert backend_metric(stack, "aftershock_failovers_total", phase="mid_stream", outcome="resumed") >= 1


async def test_stall_before_the_first_token_is_retried_then_bounded_by_the_deadline(
    stack: UpstreamStack,
) -> None:
    stack.upstreams[0].fault("stall_before", stall_s=60)

    async def check(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> None:
        started = time.monotonic()
        resp = await client.post(url, json=payload)
        assert resp.status_code == 200, resp.text
        assert time.monotonic() - started < 4.0  # the per-try timeout (1 s), then the other replica

    await until_faulted(stack, (body(i, stream=False) for i in range(8)), check)
    stack.upstreams[1].fault("stall_before", stall_s=60)
    async with httpx.AsyncClient(timeout=30) as client:
        started = time.monotonic()
        resp = await client.post(
            f"{stack.edge_url}/v1/completions", json=body(9), headers={"x-request-timeout": "2.5"}
        )
        elapsed = time.monotonic() - started
    assert resp.status_code == 504, resp.text
    assert elapsed < 4.0, elapsed  # nothing outlives the request's deadline by much


@pytest.mark.parametrize("streamed", [False, True])
async def test_upstream_retry_after_reaches_the_client_when_every_replica_waits(
    stack: UpstreamStack, streamed: bool
) -> None:
    for up in stack.upstreams:
        up.fault("status", status=429, retry_after_s=7)
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.post(f"{stack.edge_url}/v1/completions", json=body(3, stream=streamed))
    assert resp.status_code == 429, resp.text
    assert resp.headers["retry-after"] == "7"
    assert all(up.stats()["faulted"] >= 1 for up in stack.upstreams), "both replicas were tried"


async def test_upstream_retry_after_keeps_that_replica_out_for_that_long(stack: UpstreamStack) -> None:
    stack.upstreams[0].fault("status", status=429, retry_after_s=5, count=1)

    async def check(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> None:
        resp = await client.post(url, json=payload)
        assert resp.status_code == 200, resp.text  # retried on the other replica

    await until_faulted(stack, (body(i, stream=False) for i in range(8)), check)
    held_since = time.monotonic()
    seen = stack.upstreams[0].stats()["requests"]
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(10):
            resp = await client.post(f"{stack.edge_url}/v1/completions", json=body(100 + i, stream=False))
            assert resp.status_code == 200, resp.text
    assert time.monotonic() - held_since < 5, "the check ran inside the Retry-After window"
    assert stack.upstreams[0].stats()["requests"] == seen, "the replica that said 'wait 5 s' got traffic"
