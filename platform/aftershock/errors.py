"""Domain errors. Each carries its gRPC status code; nothing is collapsed to INTERNAL by accident.

One server interceptor (`aftershock.rpc.interceptors`) turns these into gRPC status with trailing
metadata, and one handler at the edge (`aftershock.edge.errors`) turns gRPC status into HTTP.
"""

from __future__ import annotations

import grpc

# Trailing-metadata keys that carry the parts of an error gRPC status alone cannot.
ERROR_TYPE_KEY = "aftershock-error-type"
ERROR_PARAM_KEY = "aftershock-error-param"
RETRY_AFTER_KEY = "aftershock-retry-after-ms"
# How long the failing replica itself asked to be left alone (a model server's explicit Retry-After);
# unlike RETRY_AFTER_KEY, a hint to the client, this keeps the backend's routing away from it.
HOLD_KEY = "aftershock-hold-replica-ms"
# OpenAI's error code for a prompt plus max_tokens beyond the model's context; the backend tries the
# model's fallback chain on it.
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


class AftershockError(Exception):
    """Base class: a message safe to show a client, a gRPC code and an OpenAI-style error type."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    error_type: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        error_type: str | None = None,
        retry_after_s: float | None = None,
        hold_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s
        self.hold_s = hold_s
        if error_type is not None:
            self.error_type = error_type

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        md: list[tuple[str, str]] = [(ERROR_TYPE_KEY, self.error_type)]
        if self.param:
            md.append((ERROR_PARAM_KEY, self.param))
        if self.retry_after_s is not None:
            md.append((RETRY_AFTER_KEY, str(max(0, round(self.retry_after_s * 1000)))))
        if self.hold_s is not None:
            md.append((HOLD_KEY, str(max(0, round(self.hold_s * 1000)))))
        return tuple(md)


class InvalidArgument(AftershockError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    error_type = "invalid_request_error"


class ModelNotFound(AftershockError):
    code = grpc.StatusCode.NOT_FOUND
    error_type = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.", param="model"
        )


class Unauthenticated(AftershockError):
    code = grpc.StatusCode.UNAUTHENTICATED
    error_type = "invalid_api_key"


class PermissionDenied(AftershockError):
    code = grpc.StatusCode.PERMISSION_DENIED
    error_type = "permission_denied"


class ResourceExhausted(AftershockError):
    """Overload or rate limit: the client should come back after retry_after_s."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    error_type = "rate_limit_exceeded"


class Unavailable(AftershockError):
    """Breaker open or no healthy replica."""

    code = grpc.StatusCode.UNAVAILABLE
    error_type = "service_unavailable"


class DeadlineExceeded(AftershockError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    error_type = "timeout"


class Cancelled(AftershockError):
    code = grpc.StatusCode.CANCELLED
    error_type = "cancelled"


class Internal(AftershockError):
    code = grpc.StatusCode.INTERNAL
    error_type = "internal_error"


class AlreadyExists(AftershockError):
    """An idempotency key reused with a different request body."""

    code = grpc.StatusCode.ALREADY_EXISTS
    error_type = "idempotency_key_conflict"
