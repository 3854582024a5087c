"""The one place where gRPC status becomes HTTP status and OpenAI's error JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import grpc
import orjson

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
    return http_error(
        HTTP_STATUS.get(err.code, 500),
        err.message,
        code=err.error_type,
        param=err.param,
        request_id=request_id,
        retry_after_s=err.retry_after_s,
        grpc_code=err.code.name,
    )


def from_rpc(exc: grpc.aio.AioRpcError, request_id: str) -> HttpError:
    return from_domain(error_from_rpc(exc), request_id)
