"""The edge's FastAPI application: routes only; the work is in serving.py."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from aftershock import errors, tracing
from aftershock.edge import errors as http_errors
from aftershock.edge.auth import Authenticator
from aftershock.edge.backend_client import BackendClient
from aftershock.edge.ratelimit import RateLimiter
from aftershock.edge.requests import request_id_of
from aftershock.edge.serving import Serving
from aftershock.edge.settings import EdgeSettings
from aftershock.metrics import EdgeMetrics

log = logging.getLogger(__name__)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def create_app(
    settings: EdgeSettings,
    backend: BackendClient,
    metrics: EdgeMetrics,
    auth: Authenticator | None = None,
    limiter: RateLimiter | None = None,
) -> FastAPI:
    auth = auth or Authenticator(settings.auth_config(), failures_total=metrics.auth_failures_total)
    limiter = limiter or RateLimiter(settings.ratelimit_config())
    serving = Serving(settings, backend, metrics, auth, limiter)
    rate_limiter = limiter

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await rate_limiter.start()
        try:
            yield
        finally:
            await rate_limiter.close()

    app = FastAPI(title="Aftershock edge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    if not tracing.disabled():
        # One SERVER span per request; without exclude_spans the instrumentor adds a span per SSE chunk.
        FastAPIInstrumentor.instrument_app(
            app, excluded_urls="healthz,readyz", exclude_spans=["send", "receive"]
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await serving.chat(request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await serving.completions(request)

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        request_id = request_id_of(request)
        try:
            key = auth.authenticate(request.headers)
            models = await backend.list_models(settings.readiness_timeout_s)
        except errors.AftershockError as domain:
            err = http_errors.from_domain(domain, request_id)
            return _json(err.body, err.status, {**err.headers, "x-request-id": request_id})
        except grpc.aio.AioRpcError as exc:
            err = http_errors.from_rpc(exc, request_id)
            return _json(err.body, err.status, {**err.headers, "x-request-id": request_id})
        allowed = set(auth.allowed_models(key, [m.name for m in models]))
        models = [m for m in models if m.name in allowed]
        data = [
            {
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": "aftershock",
                "max_model_len": m.max_model_len or None,
                "ready_replicas": m.ready_replicas,
            }
            for m in models
        ]
        return _json({"object": "list", "data": data}, headers={"x-request-id": request_id})

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
        message = {
            404: f"Unknown endpoint: {request.method} {request.url.path}",
            405: "Method not allowed.",
        }.get(exc.status_code, str(exc.detail))
        code = {404: "unknown_endpoint", 405: "method_not_allowed"}.get(exc.status_code)
        err = http_errors.http_error(exc.status_code, message, code=code, request_id=request_id)
        metrics.http_responses_total.labels(str(exc.status_code)).inc()
        return _json(err.body, exc.status_code, {"x-request-id": request_id})

    return app
