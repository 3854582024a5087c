"""Bad input gets a clear error with the right status, and the stack stays healthy afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aftershock.stack import Stack

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
GOOD = {"model": "sim-fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.edge_url, timeout=10) as client:
        yield client


def _error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers.get("x-request-id")
    error: dict[str, Any] = resp.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["message"]
    return error


def test_malformed_json(http: httpx.Client) -> None:
    error = _error(
        http.post(
            CHAT, content=b'{"model": "sim-fast", "messages": [', headers={"content-type": "application/json"}
        ),
        400,
    )
    assert "not valid JSON" in error["message"]
    assert error["type"] == "invalid_request_error"


def test_body_that_is_not_an_object(http: httpx.Client) -> None:
    error = _error(http.post(CHAT, json=[1, 2, 3]), 400)
    assert "JSON object" in error["message"]


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"max_tokens": "10"}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"stream": "yes"}, "stream"),
        ({"model": 3}, "model"),
    ],
)
def test_wrong_field_types(http: httpx.Client, patch: dict[str, Any], param: str) -> None:
    error = _error(http.post(CHAT, json={**GOOD, **patch}), 400)
    assert error["param"] == param
    assert param in error["message"]


def test_missing_required_field(http: httpx.Client) -> None:
    error = _error(http.post(CHAT, json={"model": "sim-fast"}), 400)
    assert error["param"] == "messages"


def test_unknown_model(http: httpx.Client) -> None:
    error = _error(http.post(CHAT, json={**GOOD, "model": "gpt-nonexistent"}), 404)
    assert error["code"] == "model_not_found"
    assert "gpt-nonexistent" in error["message"]


@pytest.mark.parametrize("value", [0, -1])
def test_max_tokens_not_positive(http: httpx.Client, value: int) -> None:
    error = _error(http.post(CHAT, json={**GOOD, "max_tokens": value}), 400)
    assert error["param"] == "max_tokens"


def test_max_tokens_above_model_limit(http: httpx.Client) -> None:
    error = _error(http.post(CHAT, json={**GOOD, "max_tokens": 5000}), 400)
    assert error["param"] == "max_tokens"
    assert "1024" in error["message"]  # sim-fast's max_output_tokens


def test_empty_messages(http: httpx.Client) -> None:
    error = _error(http.post(CHAT, json={**GOOD, "messages": []}), 400)
    assert error["param"] == "messages"


def test_body_over_the_size_limit(http: httpx.Client) -> None:
    huge = {**GOOD, "messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]}
    error = _error(http.post(CHAT, json=huge), 413)
    assert error["code"] == "request_too_large"


def test_unknown_endpoint(http: httpx.Client) -> None:
    error = _error(http.get("/v1/engines"), 404)
    assert error["code"] == "unknown_endpoint"
    _error(http.get(CHAT), 405)


def test_non_utf8_body(http: httpx.Client) -> None:
    error = _error(
        http.post(CHAT, content=b'{"model": "\xff\xfe"}', headers={"content-type": "application/json"}), 400
    )
    assert "UTF-8" in error["message"]


def test_request_id_is_echoed(http: httpx.Client) -> None:
    resp = http.post(CHAT, json={**GOOD, "model": "nope"}, headers={"x-request-id": "req-abc.123"})
    assert resp.headers["x-request-id"] == "req-abc.123"
    assert resp.json()["error"]["request_id"] == "req-abc.123"


def test_bad_timeout_header(http: httpx.Client) -> None:
    error = _error(http.post(CHAT, json=GOOD, headers={"x-request-timeout": "soon"}), 400)
    assert error["param"] == "x-request-timeout"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [2**32, 2**64, 10**400])
def test_token_counts_beyond_uint32(http: httpx.Client, field: str, value: int) -> None:
    # Was a 500 in plain text (protobuf's uint32 refused the value after validation passed it).
    error = _error(http.post(CHAT, json={**GOOD, field: value}), 400)
    assert error["param"] == field


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers(http: httpx.Client, literal: str) -> None:
    body = (
        b'{"model": "sim-fast", "messages": [{"role": "user", "content": "hi"}], "temperature": '
        + literal.encode()
    )
    error = _error(http.post(CHAT, content=body + b"}", headers={"content-type": "application/json"}), 400)
    assert error["param"] == "temperature"


def test_openapi_document(http: httpx.Client) -> None:
    resp = http.get("/openapi.json")
    assert resp.status_code == 200
    assert set(resp.json()["paths"]) == {CHAT, "/v1/completions", "/v1/models"}


def test_still_healthy_after_bad_input(http: httpx.Client, stack: Stack) -> None:
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").status_code == 200
    resp = http.post(CHAT, json=GOOD)
    assert resp.status_code == 200
    assert resp.json()["usage"]["completion_tokens"] == 4
    assert all(p.alive() for p in stack.procs())
