"""Load generators: closed loop, open (Poisson) loop and streams, over HTTP (edge) or gRPC (direct).

The generator runs in its own process and shares the 2 cores with the services, so it is kept
lean: one event loop, pooled connections, bodies pre-encoded.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import httpx
import orjson
from aftershock.v1 import generation_pb2 as pb
from aftershock.v1 import inference_pb2_grpc


@dataclass
class Result:
    """One request as the client saw it."""

    latency_s: float
    ttft_s: float
    tokens: int
    messages: int
    ok: bool


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    wall_s: float = 0.0

    def ok(self) -> list[Result]:
        return [r for r in self.results if r.ok]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


Send = Callable[[int], Awaitable[Result]]


class HttpTarget:
    """POST /v1/completions on the edge; stream=True counts SSE events as messages."""

    # Set by the benchmark for the dedupe-on configuration: every request carries a fresh key.
    idempotency_prefix: str | None = None

    def __init__(self, base_url: str, model: str, max_tokens: int, stream: bool, connections: int) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=connections)
        )
        self.stream = stream
        self.body = {"model": model, "prompt": "benchmark prompt", "max_tokens": max_tokens, "seed": 1}

    async def send(self, i: int) -> Result:
        start = time.perf_counter()
        body = orjson.dumps({**self.body, "seed": i, "stream": self.stream})
        headers = {"content-type": "application/json"}
        if self.idempotency_prefix is not None:
            headers["idempotency-key"] = f"{self.idempotency_prefix}-{self.stream}-{i}-{time.monotonic_ns()}"
        if not self.stream:
            resp = await self.client.post("/v1/completions", content=body, headers=headers)
            done = time.perf_counter()
            ok = resp.status_code == 200
            tokens = resp.json()["usage"]["completion_tokens"] if ok else 0
            return Result(done - start, done - start, tokens, 1, ok)
        ttft = 0.0
        events = 0
        ok = False
        async with self.client.stream("POST", "/v1/completions", content=body, headers=headers) as resp:
            async for chunk in resp.aiter_raw():
                if not ttft:
                    ttft = time.perf_counter() - start
                events += chunk.count(b"\n\ndata: ") + (1 if chunk.startswith(b"data: ") else 0)
                if chunk.endswith(b"data: [DONE]\n\n"):
                    ok = True
        done = time.perf_counter()
        # The closing event carries finish_reason and [DONE]; content events are the rest.
        return Result(done - start, ttft, int(self.body["max_tokens"]), max(0, events - 2), ok)

    async def close(self) -> None:
        await self.client.aclose()


class GrpcTarget:
    """Inference.Generate directly, the baseline the full path is compared with."""

    def __init__(self, target: str, model: str, max_tokens: int, stream: bool) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)
        self.stream = stream
        self.model = model
        self.max_tokens = max_tokens

    async def send(self, i: int) -> Result:
        req = pb.GenerateRequest(
            request_id=str(i),
            model=self.model,
            prompt="benchmark prompt",
            stream=self.stream,
            sampling=pb.SamplingParams(max_tokens=self.max_tokens, seed=i),
        )
        start = time.perf_counter()
        ttft = 0.0
        messages = 0
        tokens = 0
        async for msg in self.stub.Generate(req, timeout=60):
            if not ttft:
                ttft = time.perf_counter() - start
            messages += 1
            tokens = msg.completion_tokens
        done = time.perf_counter()
        return Result(done - start, ttft, tokens, messages, tokens == self.max_tokens)

    async def close(self) -> None:
        await self.channel.close()


async def closed_loop(send: Send, concurrency: int, total: int) -> Run:
    run = Run()
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            try:
                run.results.append(await send(i))
            except Exception:
                run.results.append(Result(0, 0, 0, 0, False))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.wall_s = time.perf_counter() - start
    return run


async def open_loop(send: Send, rate: float, duration_s: float, seed: int = 1) -> Run:
    """Poisson arrivals at `rate` per second; each request runs in its own task."""
    run = Run()
    rng = random.Random(seed)
    tasks: list[asyncio.Task[None]] = []

    async def one(i: int) -> None:
        try:
            run.results.append(await send(i))
        except Exception:
            run.results.append(Result(0, 0, 0, 0, False))

    start = time.perf_counter()
    next_at = start
    i = 0
    while next_at - start < duration_s:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
        i += 1
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    run.wall_s = time.perf_counter() - start
    return run
