"""Exactly-once generation per Idempotency-Key over real processes and a real redis-server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from aftershock.stack import Stack

from tests.e2e.sse_client import content_of, events
from tests.polling import wait_until
from tests.scrape import metric, scrape, scraped
from tests.servers import RedisServer
from tests.stack_support import running_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def keyed_stack(redis_server: RedisServer) -> Iterator[Stack]:
    env = {
        "AFTERSHOCK_BACKEND_REDIS_URL": redis_server.url,
        "AFTERSHOCK_BACKEND_DEDUPE_REDIS_TIMEOUT_S": "0.2",
    }
    with running_stack("test_dedupe", env={"backend": env}) as stack:
        yield stack


def _generations(stack: Stack) -> float:
    """Requests the engines finished, over every replica (the engines' own counters)."""
    return sum(
        scraped(p.metrics_port, "vllm:request_success_total", model_name="sim-slow") for p in stack.inference
    )


async def _ask(client: httpx.AsyncClient, url: str, key: str, stream: bool) -> str:
    # temperature 1 without a seed: two generations would almost surely differ.
    body = {
        "model": "sim-slow",
        "prompt": "once only",
        "max_tokens": 20,
        "temperature": 1.0,
        "stream": stream,
    }
    headers = {"idempotency-key": key}
    if not stream:
        resp = await client.post(url, json=body, headers=headers)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["choices"][0]["text"])
    parts: list[str] = []
    async with client.stream("POST", url, json=body, headers=headers) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for ev in events(resp):
            if ev == "[DONE]":
                break
            assert isinstance(ev, dict) and "error" not in ev, ev
            parts.append(content_of(ev))
    return "".join(parts)


async def test_fifty_concurrent_duplicates_generate_once(keyed_stack: Stack) -> None:
    before = _generations(keyed_stack)
    url = f"{keyed_stack.edge_url}/v1/completions"
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=60)) as client:
        texts = await asyncio.gather(*(_ask(client, url, "key-fifty", stream=i % 2 == 0) for i in range(50)))
    assert len(set(texts)) == 1 and texts[0], set(texts)
    await asyncio.sleep(0.2)
    assert _generations(keyed_stack) == before + 1
    samples = scrape(keyed_stack.backend.metrics_port)  # type: ignore[union-attr]
    assert metric(samples, "aftershock_dedupe_requests_total", outcome="claimed") >= 1
    joined = metric(samples, "aftershock_dedupe_requests_total", outcome="joined")
    replayed = metric(samples, "aftershock_dedupe_requests_total", outcome="replayed")
    assert joined + replayed >= 49


def _post_and_drop(stack: Stack, key: str) -> None:
    """Send a keyed request and drop the connection as soon as the status line arrives."""
    assert stack.edge is not None
    body = orjson.dumps({"model": "sim-slow", "prompt": "dropped", "max_tokens": 5, "temperature": 1.0})
    head = (
        f"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"idempotency-key: {key}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", stack.edge.port), timeout=10) as s:
        s.sendall(head + body)
        assert s.recv(12).startswith(b"HTTP/1.1 200")


async def test_reconnect_after_a_dropped_connection_replays_without_generating(keyed_stack: Stack) -> None:
    _post_and_drop(keyed_stack, "key-dropped")
    await asyncio.sleep(0.2)
    before = _generations(keyed_stack)
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.post(
            f"{keyed_stack.edge_url}/v1/completions",
            json={"model": "sim-slow", "prompt": "dropped", "max_tokens": 5, "temperature": 1.0},
            headers={"idempotency-key": "key-dropped"},
        )
    assert resp.status_code == 200
    assert resp.json()["usage"]["completion_tokens"] == 5
    await asyncio.sleep(0.2)
    assert _generations(keyed_stack) == before


async def test_same_key_with_a_different_body_is_422(keyed_stack: Stack) -> None:
    url = f"{keyed_stack.edge_url}/v1/completions"
    async with httpx.AsyncClient(timeout=30) as client:
        await _ask(client, url, "key-conflict", stream=False)
        resp = await client.post(
            url,
            json={"model": "sim-slow", "prompt": "something else", "max_tokens": 3},
            headers={"idempotency-key": "key-conflict"},
        )
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "idempotency_key_conflict"


async def test_redis_outage_fails_open_and_dedupe_resumes(
    keyed_stack: Stack, redis_server: RedisServer
) -> None:
    url = f"{keyed_stack.edge_url}/v1/completions"
    backend_port = keyed_stack.backend.metrics_port  # type: ignore[union-attr]
    redis_server.stop()
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            for i in range(8):
                text = await _ask(client, url, f"key-outage-{i}", stream=i % 2 == 0)
                assert text
        samples = scrape(backend_port)
        assert metric(samples, "aftershock_redis_up", client="dedupe") == 0
        assert metric(samples, "aftershock_dedupe_requests_total", outcome="bypassed") >= 8
        assert metric(samples, "aftershock_breaker_state", target="redis") == 1
    finally:
        redis_server.start()
    # Dedupe resumes by itself (a probe and half-open trial close the breaker).
    deadline = time.monotonic() + 20
    await wait_until(
        lambda: scraped(backend_port, "aftershock_redis_up", client="dedupe") == 1,
        within_s=20,
        what="dedupe's redis_up back to 1",
        every_s=0.25,
    )
    async with httpx.AsyncClient(timeout=30) as client:

        async def closed_after_a_probe() -> bool:
            if scraped(backend_port, "aftershock_breaker_state", target="redis") == 0:
                return True
            await _ask(client, url, f"key-probe-{time.monotonic()}", stream=False)
            return False

        await wait_until(
            closed_after_a_probe, deadline - time.monotonic(), "redis breaker closed", every_s=0.25
        )
        first = await _ask(client, url, "key-after-restart", stream=False)
        before = _generations(keyed_stack)
        second = await _ask(client, url, "key-after-restart", stream=True)
    assert first == second
    await asyncio.sleep(0.2)
    assert _generations(keyed_stack) == before
