"""CPU per request of the edge's HTTP SERVER span: the edge's own middleware
(platform/aftershock/edge/http_spans.py) against FastAPIInstrumentor, and no tracing, in one
process, interleaved.

    PYTHONPATH=$PWD/platform .venv/bin/python benchmarks/http_spans.py [--rounds 12] [--quick]

One FastAPI app per way, with the edge's route paths and wired by the edge's own `trace_http`; each
request is a chat completion as the `openai` SDK sends it (its 17 headers) and sets two GenAI
attributes, as the edge's handler does. Spans go through a batch processor to an exporter that
encodes them as the OTLP exporter would and drops them, so export's CPU is counted (process CPU,
all threads). The ways take turns in batches, in alternating order, so drift falls on all; each
figure is the median over rounds. Across processes (benchmarks/deltas.py) two stacks of one
configuration differ by up to ~0.07 ms per request per service, as much as what is measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from aftershock.edge.app import trace_http
from aftershock.edge.settings import HttpTracing
from aftershock.span_encoding import encode
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from starlette.requests import Request
from starlette.responses import Response

WAYS: dict[str, HttpTracing | None] = {"none": None, "edge": "edge", "instrumentor": "instrumentor"}
PATH = "/v1/chat/completions"
BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
# What openai-python 1.x sends with a chat completion.
HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
    (b"accept", b"application/json"),
    (b"content-type", b"application/json"),
    (b"user-agent", b"OpenAI/Python 1.99.0"),
    (b"x-stainless-lang", b"python"),
    (b"x-stainless-package-version", b"1.99.0"),
    (b"x-stainless-os", b"Linux"),
    (b"x-stainless-arch", b"x64"),
    (b"x-stainless-runtime", b"CPython"),
    (b"x-stainless-runtime-version", b"3.11.7"),
    (b"authorization", b"Bearer sk-bench"),
    (b"x-stainless-async", b"async:asyncio"),
    (b"x-stainless-retry-count", b"0"),
    (b"x-stainless-read-timeout", b"600"),
    (b"content-length", str(len(BODY)).encode()),
]


class EncodeAndDrop(SpanExporter):
    """Counts what it drops: a way that made no span per request would measure nothing."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        encode(spans).SerializeToString()
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def make_app(way: HttpTracing | None, provider: TracerProvider) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post(PATH)
    async def chat(request: Request) -> Response:
        await request.body()
        span = trace.get_current_span()
        span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"})
        return Response(b'{"id": "x"}', media_type="application/json")

    async def other() -> Response:
        return Response(b"{}")

    for path in ("/v1/completions", "/v1/models", "/openapi.json", "/healthz", "/readyz"):
        app.get(path)(other)
    if way is not None:
        trace_http(app, way, provider)
    return app


async def serve(app: FastAPI, requests: int) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Any) -> None:
        pass

    for _ in range(requests):
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": PATH,
            "raw_path": PATH.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": list(HEADERS),
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        await app(scope, receive, send)


async def measure(rounds: int, batch: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """CPU µs per request of each way per round, and the spans each exported per request."""
    exporters = {name: EncodeAndDrop() for name in WAYS}
    providers = {name: TracerProvider() for name in WAYS}
    for name, provider in providers.items():
        provider.add_span_processor(BatchSpanProcessor(exporters[name]))
    apps = {name: make_app(way, providers[name]) for name, way in WAYS.items()}
    for app in apps.values():  # warm-up
        await serve(app, batch // 5)
    figures: dict[str, list[float]] = {name: [] for name in apps}
    for r in range(rounds):
        order = list(apps.items()) if r % 2 else list(reversed(apps.items()))
        for name, app in order:
            started = time.process_time()
            await serve(app, batch)
            figures[name].append((time.process_time() - started) / batch * 1e6)
    served = batch // 5 + rounds * batch
    for provider in providers.values():
        provider.shutdown()  # exports what is still queued
    return figures, {name: exporters[name].spans / served for name in WAYS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="two small rounds (a smoke run)")
    args = parser.parse_args(argv)
    rounds, batch = (2, 200) if args.quick else (args.rounds, 1500)
    figures, spans = asyncio.run(measure(rounds, batch))
    base = statistics.median(figures["none"])
    print(f"{'way':<14}{'µs/request':>12}{'over none':>12}{'min':>10}{'max':>10}{'spans/req':>11}")
    for name, values in figures.items():
        median = statistics.median(values)
        print(
            f"{name:<14}{median:>12.1f}{median - base:>12.1f}{min(values):>10.1f}{max(values):>10.1f}"
            f"{spans[name]:>11.2f}"
        )
    print(f"CPU per request (process, all threads), median of {rounds} round(s) of {batch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
