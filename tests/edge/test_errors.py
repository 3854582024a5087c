"""gRPC status → HTTP status (DESIGN.md's table) and OpenAI's error JSON."""

from __future__ import annotations

import json

import grpc
import pytest
from aftershock import errors
from aftershock.edge.errors import HTTP_STATUS, from_domain, from_routing, from_rpc, http_error
from aftershock.edge.requests import PayloadTooLarge

# DESIGN.md: INVALID_ARGUMENT 400, NOT_FOUND 404, UNAUTHENTICATED 401, PERMISSION_DENIED 403,
# RESOURCE_EXHAUSTED 429 + Retry-After, UNAVAILABLE 503 + Retry-After, DEADLINE_EXCEEDED 504,
# CANCELLED 499, INTERNAL 500, ALREADY_EXISTS 422.
TABLE: list[tuple[errors.AftershockError, int, str, bool]] = [
    (errors.InvalidArgument("bad", param="max_tokens"), 400, "invalid_request_error", False),
    (errors.ModelNotFound("gpt-x"), 404, "invalid_request_error", False),
    (errors.Unauthenticated("who are you"), 401, "authentication_error", False),
    (errors.PermissionDenied("not yours"), 403, "permission_error", False),
    (errors.ResourceExhausted("slow down", retry_after_s=2.0), 429, "rate_limit_error", True),
    (errors.Unavailable("breaker open", retry_after_s=3.0), 503, "server_error", True),
    (errors.DeadlineExceeded("too slow"), 504, "server_error", False),
    (errors.Cancelled("gone"), 499, "invalid_request_error", False),
    (errors.Internal("oops"), 500, "server_error", False),
    (errors.AlreadyExists("key reused"), 422, "invalid_request_error", False),
]


@pytest.mark.parametrize(("err", "status", "openai_type", "retry_after"), TABLE, ids=lambda v: str(v)[:20])
def test_domain_error_to_http(
    err: errors.AftershockError, status: int, openai_type: str, retry_after: bool
) -> None:
    http = from_domain(err, "req-42")
    assert http.status == status
    assert http.grpc_code == err.code.name
    assert (
        json.loads(http.encoded())
        == http.body
        == {
            "error": {
                "message": err.message,
                "type": openai_type,
                "param": err.param,
                "code": err.error_type,
                "request_id": "req-42",
            }
        }
    )
    if retry_after:
        assert http.headers == {"retry-after": str(int(err.retry_after_s or 0))}
    else:
        assert http.headers == {}


def test_table_matches_the_design() -> None:
    expected = {
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.CANCELLED: 499,
        grpc.StatusCode.ALREADY_EXISTS: 422,
    }
    assert {code: HTTP_STATUS[code] for code in expected} == expected
    assert grpc.StatusCode.INTERNAL not in HTTP_STATUS  # falls through to 500
    assert from_domain(errors.Internal("x"), "").status == 500


@pytest.mark.parametrize(
    ("status", "retry_after_s", "header"),
    [
        (429, None, "1"),
        (503, None, "1"),
        (429, 0.2, "1"),
        (503, 2.01, "3"),
        (429, 30.0, "30"),
        (500, 4.0, "4"),
    ],
)
def test_retry_after_is_whole_seconds_rounded_up(
    status: int, retry_after_s: float | None, header: str
) -> None:
    assert http_error(status, "m", code=None, retry_after_s=retry_after_s).headers == {"retry-after": header}


def test_request_id_is_left_out_when_unknown() -> None:
    body = http_error(404, "Unknown endpoint", code="unknown_endpoint").body
    assert body == {
        "error": {
            "message": "Unknown endpoint",
            "type": "invalid_request_error",
            "param": None,
            "code": "unknown_endpoint",
        }
    }


def rpc_error(code: grpc.StatusCode, details: str, *md: tuple[str, str]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*md), details)


def test_rpc_error_with_metadata_to_http() -> None:
    http = from_rpc(
        rpc_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "Engine overloaded.",
            ("aftershock-error-type", "engine_overloaded"),
            ("aftershock-retry-after-ms", "2500"),
        ),
        "rid",
    )
    assert http.status == 429
    assert http.headers == {"retry-after": "3"}
    assert http.body["error"]["code"] == "engine_overloaded"
    assert http.body["error"]["message"] == "Engine overloaded."
    assert http.grpc_code == "RESOURCE_EXHAUSTED"


def test_not_found_keeps_its_param_and_type() -> None:
    http = from_rpc(
        rpc_error(
            grpc.StatusCode.NOT_FOUND,
            "The model 'x' does not exist or you do not have access to it.",
            ("aftershock-error-type", "model_not_found"),
            ("aftershock-error-param", "model"),
        ),
        "rid",
    )
    assert http.status == 404
    assert (http.body["error"]["code"], http.body["error"]["param"]) == ("model_not_found", "model")


@pytest.mark.parametrize(
    ("code", "status"),
    [(grpc.StatusCode.UNKNOWN, 500), (grpc.StatusCode.DATA_LOSS, 500), (grpc.StatusCode.UNIMPLEMENTED, 501)],
)
def test_codes_outside_the_table(code: grpc.StatusCode, status: int) -> None:
    http = from_rpc(rpc_error(code, "strange"), "rid")
    assert http.status == status
    assert http.body["error"]["type"] == "server_error"
    assert http.grpc_code == code.name


def test_a_body_over_the_limit_is_413() -> None:
    # gRPC has no such code: the mapping keys it on the error type, so no handler picks 413 itself.
    http = from_domain(PayloadTooLarge("Request body exceeds the limit of 10 bytes."), "rid")
    assert http.status == 413
    assert http.grpc_code == "INVALID_ARGUMENT"
    assert (http.body["error"]["type"], http.body["error"]["code"]) == (
        "invalid_request_error",
        "request_too_large",
    )


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (404, "unknown_endpoint", "Unknown endpoint: GET /v1/engines"),
        (405, "method_not_allowed", "Method not allowed."),
    ],
)
def test_routing_refusals(status: int, code: str, message: str) -> None:
    http = from_routing(status, "GET", "/v1/engines", "detail", "rid")
    assert http.status == status
    assert http.body == {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": code,
            "request_id": "rid",
        }
    }
