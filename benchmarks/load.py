"""Load generators: closed loop, open (Poisson) loop and streams, over HTTP (edge) or gRPC (direct).

The generator runs in its own process and shares the cores with the services, so it is kept lean:
one event loop, pooled connections, bodies pre-encoded. Its HTTP client is aiohttp: httpx's
connection pool cost 2.2-2.4 ms of CPU per request at 32 concurrent requests here, so one client
process topped out near 400 req/s and capped every closed loop (aiohttp: 0.11-0.17 ms).

Every request is timed from the moment it was due: in a closed loop that is when a worker picks it
up, in an open loop its scheduled arrival, so a generator that falls behind shows up as latency
instead of hiding it (coordinated omission). A failed request is kept as a Result with its error.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
import grpc
import orjson
from aftershock.v1 import backend_pb2_grpc, inference_pb2_grpc
from aftershock.v1 import generation_pb2 as pb


@dataclass
class Result:
    """One request as the client saw it."""

    latency_s: float
    ttft_s: float
    tokens: int
    messages: int
    ok: bool
    error: str = ""


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    wall_s: float = 0.0

    def ok(self) -> list[Result]:
        return [r for r in self.results if r.ok]

    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            if not r.ok:
                out[r.error or "unknown"] = out.get(r.error or "unknown", 0) + 1
        return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


# send(i, due): request number i, due at perf_counter() time `due`.
Send = Callable[[int, float], Awaitable[Result]]


class SseCounter:
    """Reads an OpenAI SSE stream chunk by chunk, whatever the chunk boundaries.

    Events are split on blank lines across reads, so `data: [DONE]` or a usage event cut in two by
    the transport is still found. Tokens come from the stream's own usage event (requested with
    `stream_options.include_usage`); without one, every content event counts as one token.
    """

    def __init__(self) -> None:
        self._buf = b""
        self.events = 0  # data events before [DONE], the usage-only event included
        self.content_events = 0
        self.usage_tokens: int | None = None
        self.done = False
        self.error = ""

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        *events, self._buf = self._buf.split(b"\n\n")
        for event in events:
            data = event.strip()
            if not data.startswith(b"data:"):
                continue
            data = data[5:].strip()
            if data == b"[DONE]":
                self.done = True
                continue
            self.events += 1
            if b'"error"' in data and b'"choices"' not in data:
                self.error = "stream_error_event"
            elif b'"usage":{' in data or b'"usage": {' in data:
                msg = orjson.loads(data)
                self.usage_tokens = int(msg["usage"]["completion_tokens"])
                if any(_text(c) for c in msg.get("choices") or ()):
                    self.content_events += 1
            elif b'"text":""' not in data and b'"content":""' not in data:
                self.content_events += 1

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.content_events


def _text(choice: dict[str, object]) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return str(delta.get("content") or "")
    return str(choice.get("text") or "")


class HttpTarget:
    """POST /v1/completions (or chat) on an OpenAI-compatible server: the edge, LiteLLM, the upstream."""

    # Set by the benchmark for the dedupe-on configuration: every request carries a fresh key.
    idempotency_prefix: str | None = None

    def __init__(
        self,
        base_url: str,
        model: str,
        max_tokens: int,
        stream: bool,
        connections: int,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/v1/completions"
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None  # made on first use, on the running loop
        self.stream = stream
        self.max_tokens = max_tokens
        self.headers = {"content-type": "application/json", **(headers or {})}
        self.body: dict[str, object] = {
            "model": model,
            "prompt": "benchmark prompt",
            "max_tokens": max_tokens,
            "stream": stream,
        }
        if stream:
            self.body["stream_options"] = {"include_usage": True}

    async def send(self, i: int, due: float) -> Result:
        body = orjson.dumps({**self.body, "seed": i})
        headers = self.headers
        if self.idempotency_prefix is not None:
            key = f"{self.idempotency_prefix}-{self.stream}-{i}-{time.monotonic_ns()}"
            headers = {**headers, "idempotency-key": key}
        session = self._client()
        if not self.stream:
            async with session.post(self.url, data=body, headers=headers) as resp:
                raw = await resp.read()
            done = time.perf_counter()
            if resp.status != 200:
                return Result(done - due, done - due, 0, 1, False, f"http_{resp.status}")
            tokens = int(orjson.loads(raw)["usage"]["completion_tokens"])
            return Result(done - due, done - due, tokens, 1, True)
        ttft = 0.0
        sse = SseCounter()
        status = 0
        async with session.post(self.url, data=body, headers=headers) as resp:
            status = resp.status
            async for chunk in resp.content.iter_any():
                if not ttft:
                    ttft = time.perf_counter() - due
                sse.feed(chunk)
        done = time.perf_counter()
        error = "" if status == 200 else f"http_{status}"
        error = error or sse.error or ("" if sse.done else "no_done")
        return Result(done - due, ttft, sse.tokens, sse.events, not error, error)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections),
                timeout=aiohttp.ClientTimeout(total=60),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class GrpcTarget:
    """Generate over gRPC on the inference service (direct) or the backend: clients of one kind."""

    def __init__(
        self, target: str, model: str, max_tokens: int, stream: bool, *, backend: bool = False
    ) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        stub = backend_pb2_grpc.BackendStub if backend else inference_pb2_grpc.InferenceStub
        self.stub = stub(self.channel)
        self.stream = stream
        self.model = model
        self.max_tokens = max_tokens

    async def send(self, i: int, due: float) -> Result:
        req = pb.GenerateRequest(
            request_id=str(i),
            model=self.model,
            prompt="benchmark prompt",
            stream=self.stream,
            sampling=pb.SamplingParams(max_tokens=self.max_tokens, seed=i),
        )
        ttft = 0.0
        messages = 0
        tokens = 0
        finished = False
        async for msg in self.stub.Generate(req, timeout=60):
            if not ttft:
                ttft = time.perf_counter() - due
            messages += 1
            tokens = msg.completion_tokens
            finished = finished or msg.finish_reason != pb.FINISH_REASON_UNSPECIFIED
        done = time.perf_counter()
        return Result(done - due, ttft, tokens, messages, finished, "" if finished else "no_finish")

    async def close(self) -> None:
        await self.channel.close()


def _failed(due: float, exc: BaseException) -> Result:
    now = time.perf_counter()
    code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
    return Result(now - due, now - due, 0, 0, False, code)


async def closed_loop(send: Send, concurrency: int, total: int) -> Run:
    run = Run()
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            due = time.perf_counter()
            try:
                run.results.append(await send(i, due))
            except Exception as exc:  # kept and reported, never dropped
                run.results.append(_failed(due, exc))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.wall_s = time.perf_counter() - start
    return run


async def open_loop(send: Send, rate: float, duration_s: float, seed: int = 1) -> Run:
    """Poisson arrivals at `rate` per second; each request runs in its own task, timed from when due."""
    return (await interleaved_open_loops({"": send}, rate, duration_s, seed=seed))[""]


async def interleaved_open_loops(
    sends: Mapping[str, Send], rate: float, duration_s: float, block_s: float = 1.0, seed: int = 1
) -> dict[str, Run]:
    """Open loops over several targets in turns: blocks of `block_s`, each target's turn at `rate`
    Poisson arrivals, in a fresh random order every cycle, until each has had `duration_s`. Targets
    compared in one window share whatever the machine does meanwhile (another tenant's steal, a
    slow second), where windows one after another would hand it to one side."""
    names = list(sends)
    runs = {name: Run() for name in names}
    rng = random.Random(seed)
    order = random.Random(seed + 1)
    tasks: list[asyncio.Task[None]] = []

    async def one(name: str, i: int, due: float) -> None:
        try:
            runs[name].results.append(await sends[name](i, due))
        except Exception as exc:  # kept and reported, never dropped
            runs[name].results.append(_failed(due, exc))

    start = time.perf_counter()
    cycles: list[list[str]] = []
    due = start
    i = 0
    while due - start < duration_s * len(names):
        block = int((due - start) / block_s)
        while len(cycles) <= block // len(names):
            cycles.append(order.sample(names, len(names)))
        name = cycles[block // len(names)][block % len(names)]
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(name, i, due)))
        i += 1
        due += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - start
    for run in runs.values():
        run.wall_s = wall / len(names)  # each target's share of the offered time
    return runs
