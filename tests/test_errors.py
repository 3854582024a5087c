"""Domain errors: each carries its gRPC code, an OpenAI-style type and the trailing metadata."""

from __future__ import annotations

import grpc
import pytest
from aftershock import errors

CODES = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error"),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, "invalid_api_key"),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, "permission_denied"),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limit_exceeded"),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE, "service_unavailable"),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, "timeout"),
    (errors.Cancelled, grpc.StatusCode.CANCELLED, "cancelled"),
    (errors.Internal, grpc.StatusCode.INTERNAL, "internal_error"),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, "idempotency_key_conflict"),
]


@pytest.mark.parametrize(("cls", "code", "error_type"), CODES)
def test_each_error_carries_its_code(
    cls: type[errors.AftershockError], code: grpc.StatusCode, error_type: str
) -> None:
    err = cls("message for the client")
    assert (err.code, err.error_type, err.message, str(err)) == (
        code,
        error_type,
        "message for the client",
        "message for the client",
    )
    assert err.trailing_metadata() == (("aftershock-error-type", error_type),)


def test_model_not_found() -> None:
    err = errors.ModelNotFound("gpt-x")
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert err.message == "The model 'gpt-x' does not exist or you do not have access to it."
    assert err.trailing_metadata() == (
        ("aftershock-error-type", "model_not_found"),
        ("aftershock-error-param", "model"),
    )


@pytest.mark.parametrize(
    ("seconds", "ms"), [(1.0, "1000"), (0.2504, "250"), (0.0004, "0"), (-3.0, "0"), (0, "0")]
)
def test_retry_after_metadata_is_whole_milliseconds(seconds: float, ms: str) -> None:
    err = errors.ResourceExhausted("slow down", retry_after_s=seconds, param="x", error_type="overloaded")
    assert err.trailing_metadata() == (
        ("aftershock-error-type", "overloaded"),
        ("aftershock-error-param", "x"),
        ("aftershock-retry-after-ms", ms),
    )


def test_type_override_is_per_instance() -> None:
    errors.Unavailable("a", error_type="circuit_open")
    assert errors.Unavailable("b").error_type == "service_unavailable"
