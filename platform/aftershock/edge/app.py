"""The edge's FastAPI application: routes only. Every API route goes through admission.py; the
completion endpoints are served by completions.py, one handler object per endpoint."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.trace import TracerProvider
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from aftershock import errors, tracing
from aftershock.edge import errors as http_errors
from aftershock.edge import openapi, responses
from aftershock.edge.admission import Admission, Pass
from aftershock.edge.auth import Authenticator
from aftershock.edge.backend_client import BackendClient
from aftershock.edge.completions import CompletionHandler
from aftershock.edge.endpoints import CHAT_COMPLETIONS, COMPLETIONS
from aftershock.edge.http_spans import ServerSpans
from aftershock.edge.ratelimit import RateLimiter
from aftershock.edge.requests import request_id_of
from aftershock.edge.settings import EdgeSettings, HttpTracing
from aftershock.metrics import EdgeMetrics

log = logging.getLogger(__name__)
JSON = "application/json"
PROBES = ("/healthz", "/readyz")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def create_app(
    settings: EdgeSettings,
    backend: BackendClient,
    metrics: EdgeMetrics,
    auth: Authenticator | None = None,
    limiter: RateLimiter | None = None,
) -> FastAPI:
    auth = auth or Authenticator(settings.auth_config(), failures_total=metrics.auth_failures_total)
    rate_limiter = limiter or RateLimiter(settings.ratelimit_config())
    admission = Admission(
        auth,
        rate_limiter,
        metrics,
        max_in_flight=settings.max_in_flight,
        shed_retry_after_s=settings.shed_retry_after_s,
    )
    chat = CompletionHandler(CHAT_COMPLETIONS, settings, backend, metrics, admission)
    completions = CompletionHandler(COMPLETIONS, settings, backend, metrics, admission)
    openapi_document = openapi.encoded()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await rate_limiter.start()
        try:
            yield
        finally:
            await rate_limiter.close()

    # FastAPI's generated document would describe raw Request handlers; openapi.py writes the real one.
    app = FastAPI(title="Aftershock edge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.post(CHAT_COMPLETIONS.path)
    async def chat_completions(request: Request) -> Response:
        return await chat(request)

    @app.post(COMPLETIONS.path)
    async def text_completions(request: Request) -> Response:
        return await completions(request)

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        request_id = request_id_of(request)
        admitted: Pass | None = None
        try:
            admitted = admission.enter(request.headers)
            await admitted.charge(None, 0)  # one request, no tokens
            models = await backend.list_models(settings.readiness_timeout_s)
        except (errors.AftershockError, grpc.aio.AioRpcError) as exc:
            err = http_errors.from_error(exc, request_id)
            rate = admitted.rate_headers if admitted is not None else {}
            return err.response({**rate, "x-request-id": request_id})
        finally:
            if admitted is not None:
                admitted.release()
        allowed = set(auth.allowed_models(admitted.key, [m.name for m in models]))
        body = responses.model_list(m for m in models if m.name in allowed)
        return Response(body, media_type=JSON, headers={**admitted.rate_headers, "x-request-id": request_id})

    @app.get("/openapi.json")
    async def openapi_json() -> Response:
        # Public like the health probes: it describes the API, it grants nothing.
        return Response(openapi_document, media_type=JSON)

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        ready, detail = await backend.readiness(settings.readiness_timeout_s)
        return _json({"status": "ready" if ready else "not_ready", "detail": detail}, 200 if ready else 503)

    @app.exception_handler(StarletteHTTPException)
    async def http_exception(request: Request, exc: StarletteHTTPException) -> Response:
        # Unknown endpoints and wrong methods answer in OpenAI's error shape too.
        request_id = request_id_of(request)
        err = http_errors.from_routing(
            exc.status_code, request.method, request.url.path, str(exc.detail), request_id
        )
        metrics.http_responses_total.labels(str(err.status)).inc()
        return err.response({"x-request-id": request_id})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # Starlette logs the exception and re-raises it to the server after sending this.
        request_id = request_id_of(request)
        err = http_errors.unexpected(request_id)
        metrics.http_responses_total.labels(str(err.status)).inc()
        return err.response({"x-request-id": request_id})

    if not tracing.disabled():
        trace_http(app, settings.http_tracing)
    return app


def trace_http(app: FastAPI, maker: HttpTracing, tracer_provider: TracerProvider | None = None) -> None:
    """One SERVER span per request, none for the probes; call it once the routes are in place."""
    if maker == "instrumentor":
        # Without exclude_spans the instrumentor adds a span per SSE chunk.
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=tracer_provider,
            excluded_urls="healthz,readyz",
            exclude_spans=["send", "receive"],
        )
        return
    routes = [path for route in app.routes if isinstance(path := getattr(route, "path", None), str)]
    app.add_middleware(ServerSpans, routes=routes, excluded=PROBES, tracer_provider=tracer_provider)
