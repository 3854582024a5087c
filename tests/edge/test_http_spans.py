"""The edge's HTTP SERVER span (http_spans.py) against the real FastAPIInstrumentor's: the same
requests through the same routes, wired as the edge wires either, must give the same span."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aftershock.edge.app import create_app, trace_http
from aftershock.edge.backend_client import BackendClient
from aftershock.edge.http_spans import ServerSpans
from aftershock.edge.settings import EdgeSettings, HttpTracing
from aftershock.metrics import EdgeMetrics, new_registry
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
SDK_AND_PROXY_HEADERS = {
    "traceparent": PARENT,
    "baggage": "tenant=a",
    "user-agent": "OpenAI/Python 1.99.0",
    "x-stainless-lang": "python",
    "x-stainless-retry-count": "0",
    "authorization": "Bearer sk-x",
    "accept": "application/json",
    "x-forwarded-for": "203.0.113.9, 10.0.0.1",
    "x-forwarded-proto": "https",
    "x-forwarded-host": "api.example.com",
    "forwarded": "for=203.0.113.9;proto=https",
    "x-real-ip": "203.0.113.9",
    "x-request-id": "req-1",
    "idempotency-key": "k-1",
}


def traced_app(maker: HttpTracing) -> tuple[FastAPI, InMemorySpanExporter]:
    """Routes of the kinds the edge has, traced by `maker` into memory."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return Response(await request.body(), media_type="application/json")

    @app.post("/v1/completions")
    async def stream(request: Request) -> Response:
        async def events() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"data: {i}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models() -> Response:
        return JSONResponse({"data": []}, status_code=200)

    @app.get("/v1/broken")
    async def broken() -> Response:
        raise RuntimeError("a bug")

    @app.get("/v1/unavailable")
    async def unavailable() -> Response:
        return JSONResponse({"error": {}}, status_code=503)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b"ok")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": {"type": "server_error"}}, status_code=500)

    kept = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    trace_http(app, maker, provider)
    return app, kept


def described(span: ReadableSpan) -> dict[str, Any]:
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind,
        "scope": span.instrumentation_scope.name if span.instrumentation_scope else None,
        "trace_id": span.context.trace_id if parent is not None and parent.is_remote else "new",
        "parent": parent.span_id if parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "status": (span.status.status_code, span.status.description),
        # The stack traces differ by the middleware's own frames.
        "events": [
            (e.name, {k: v for k, v in (e.attributes or {}).items() if k != "exception.stacktrace"})
            for e in span.events
        ],
    }


REQUESTS: list[tuple[str, str, dict[str, str], bytes]] = [
    ("POST", "/v1/chat/completions", {}, b'{"model": "m"}'),
    ("POST", "/v1/chat/completions?debug=1", {"traceparent": PARENT}, b"{}"),
    ("POST", "/v1/completions", {"user-agent": "openai/1.0 python"}, b"{}"),
    # The edge gives the library's helpers only the headers they read: any other one they came to
    # read (a proxy's, a client's) would show here as a difference.
    ("POST", "/v1/completions", SDK_AND_PROXY_HEADERS, b"{}"),
    ("GET", "/v1/models", {"traceparent": PARENT, "tracestate": "vendor=x"}, b""),
    ("GET", "/v1/broken", {}, b""),
    ("GET", "/v1/unavailable", {}, b""),
    ("GET", "/v1/nowhere", {}, b""),  # 404: no route, so no http.route
    ("DELETE", "/v1/completions", {}, b""),  # 405: the route's path, a method it does not take
    ("GET", "/healthz", {}, b""),  # a probe: no span
]


@pytest.mark.parametrize(("method", "path", "headers", "body"), REQUESTS)
async def test_the_edges_span_is_the_instrumentors(
    method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    seen: dict[str, list[dict[str, Any]]] = {}
    statuses = set()
    for maker in ("edge", "instrumentor"):
        app, kept = traced_app(maker)  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as client:
            response = await client.request(method, path, headers=headers, content=body)
        statuses.add(response.status_code)
        seen[maker] = [described(span) for span in kept.get_finished_spans()]
    assert len(statuses) == 1
    assert seen["edge"] == seen["instrumentor"]
    assert len(seen["edge"]) == (0 if path == "/healthz" else 1)


@pytest.mark.parametrize(
    ("env", "made_by"),
    [
        ({}, "edge"),
        ({"AFTERSHOCK_EDGE_HTTP_TRACING": "instrumentor"}, "instrumentor"),
        ({"AFTERSHOCK_EDGE_HTTP_TRACING": "instrumentor", "OTEL_SDK_DISABLED": "true"}, None),
        ({"OTEL_SDK_DISABLED": "true"}, None),
    ],
)
async def test_the_setting_chooses_who_makes_the_span(
    env: dict[str, str], made_by: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    backend = BackendClient("127.0.0.1:9", models_cache_s=0)
    try:
        app = create_app(EdgeSettings(), backend, EdgeMetrics(new_registry()))
    finally:
        await backend.close()
    ours = [m for m in app.user_middleware if m.cls is ServerSpans]
    instrumented = getattr(app, "_is_instrumented_by_opentelemetry", False)
    assert (len(ours), instrumented) == {"edge": (1, False), "instrumentor": (0, True), None: (0, False)}[
        made_by
    ]
    if ours:
        assert set(ours[0].kwargs["routes"]) >= {"/v1/chat/completions", "/v1/completions", "/v1/models"}


def test_an_unknown_choice_stops_the_edge_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFTERSHOCK_EDGE_HTTP_TRACING", "both")
    with pytest.raises(ValidationError, match="http_tracing"):
        EdgeSettings()
