"""The one place where an error becomes an HTTP status and OpenAI's error JSON.

Every status the edge answers with other than 200 is chosen here: domain errors and gRPC status by
DESIGN.md's table, the edge-only 413 by its error type, and Starlette's routing refusals (404, 405).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from starlette.responses import Response

from aftershock import errors
from aftershock.rpc.status import error_from_rpc

# DESIGN.md's error table.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 422,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# Errors the edge raises itself whose HTTP status gRPC has no code for.
REQUEST_TOO_LARGE = "request_too_large"
_STATUS_BY_ERROR_TYPE = {REQUEST_TOO_LARGE: 413}

# Starlette's own refusals (no route, wrong method): message and code by status.
_ROUTING = {404: "unknown_endpoint", 405: "method_not_allowed"}

# OpenAI's error "type" by HTTP status.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


@dataclass(frozen=True)
class HttpError:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    grpc_code: str

    def encoded(self) -> bytes:
        return orjson.dumps(self.body)

    def response(self, headers: dict[str, str]) -> Response:
        """The JSON response; `headers` (request id, rate limits, trace) join the error's own."""
        return Response(
            self.encoded(),
            status_code=self.status,
            media_type="application/json",
            headers={**self.headers, **headers},
        )


def http_error(
    status: int,
    message: str,
    *,
    code: str | None,
    param: str | None = None,
    request_id: str = "",
    retry_after_s: float | None = None,
    grpc_code: str = "UNKNOWN",
) -> HttpError:
    error: dict[str, Any] = {
        "message": message,
        "type": _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error"),
        "param": param,
        "code": code,
    }
    if request_id:
        error["request_id"] = request_id
    headers: dict[str, str] = {}
    if retry_after_s is not None or status in (429, 503):
        headers["retry-after"] = str(max(1, math.ceil(retry_after_s if retry_after_s is not None else 1.0)))
    return HttpError(status, {"error": error}, headers, grpc_code)


def from_domain(err: errors.AftershockError, request_id: str) -> HttpError:
    status = _STATUS_BY_ERROR_TYPE.get(err.error_type) or HTTP_STATUS.get(err.code, 500)
    return http_error(
        status,
        err.message,
        code=err.error_type,
        param=err.param,
        request_id=request_id,
        retry_after_s=err.retry_after_s,
        grpc_code=err.code.name,
    )


def from_rpc(exc: grpc.aio.AioRpcError, request_id: str) -> HttpError:
    return from_domain(error_from_rpc(exc), request_id)


def from_error(exc: errors.AftershockError | grpc.aio.AioRpcError, request_id: str) -> HttpError:
    """A domain error raised at the edge, or the backend's gRPC status."""
    if isinstance(exc, errors.AftershockError):
        return from_domain(exc, request_id)
    return from_rpc(exc, request_id)


def from_routing(status: int, method: str, path: str, detail: str, request_id: str) -> HttpError:
    """Starlette's HTTPException (no such route, wrong method) in OpenAI's error shape."""
    message = {404: f"Unknown endpoint: {method} {path}", 405: "Method not allowed."}.get(status, detail)
    return http_error(status, message, code=_ROUTING.get(status), request_id=request_id)


def unexpected(request_id: str) -> HttpError:
    """A bug in the edge: still OpenAI's error shape (the SDKs parse it), never a plain-text 500."""
    return http_error(
        500, "The server had an error processing the request.", code="internal_error", request_id=request_id
    )
