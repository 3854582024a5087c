"""Reading an HTTP request: body limits, JSON validation messages and params, headers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from aftershock import errors
from aftershock.edge.requests import (
    PayloadTooLarge,
    idempotency_key_of,
    parse_json_body,
    read_body,
    request_id_of,
    timeout_of,
)
from aftershock.edge.schema import ChatCompletionRequest, CompletionRequest
from starlette.requests import Request
from starlette.types import Message

CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "sim-small", "prompt": "Once"}


def make_request(headers: Mapping[str, str] | None = None, chunks: list[bytes] | None = None) -> Request:
    """A Starlette request over a plain ASGI scope and receive channel."""
    pending = list(chunks or [])

    async def receive() -> Message:
        if pending:
            body = pending.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(pending)}
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "query_string": b"",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()],
    }
    return Request(scope, receive)


def chat_error(patch: Mapping[str, Any]) -> errors.InvalidArgument:
    with pytest.raises(errors.InvalidArgument) as info:
        parse_json_body(json.dumps({**CHAT, **patch}).encode(), ChatCompletionRequest)
    return info.value


# --- body -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "Request body is empty; a JSON object is required."),
        (b'{"model": "m", "messages": [', "Request body is not valid JSON"),
        (b"[1, 2, 3]", "Request body must be a JSON object."),
        (b'"just a string"', "Request body must be a JSON object."),
        (b'{"model": "\xff\xfe"}', "Request body is not valid UTF-8 (byte 11)."),
    ],
)
def test_malformed_bodies(body: bytes, message: str) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        parse_json_body(body, ChatCompletionRequest)
    assert info.value.message.startswith(message)
    assert info.value.param is None
    assert info.value.error_type == "invalid_request_error"


@pytest.mark.parametrize(
    ("patch", "param", "fragment"),
    [
        ({"max_tokens": "10"}, "max_tokens", "valid integer"),
        ({"max_tokens": 1.5}, "max_tokens", "valid integer"),
        ({"max_tokens": 0}, "max_tokens", "greater than 0"),
        ({"temperature": "hot"}, "temperature", "valid number"),
        ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"n": 2}, "n", "less than or equal to 1"),
        ({"seed": 2**63}, "seed", "less than 9223372036854775808"),
        ({"stream": "yes"}, "stream", "valid boolean"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", "valid boolean"),
        ({"model": ""}, "model", "at least 1 character"),
        ({"messages": []}, "messages", "at least 1 item"),
        ({"messages": "hi"}, "messages", "valid array"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", "'user'"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content", "valid string"),
        ({"stop": 5}, "stop", "valid string"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop sequences"),
        ({"stop": ["a", ""]}, "stop", "must not be empty"),
    ],
)
def test_wrong_values_name_the_field(patch: Mapping[str, Any], param: str, fragment: str) -> None:
    err = chat_error(patch)
    assert err.param == param
    assert err.message.startswith(f"Invalid value for '{param}': ")
    assert fragment in err.message
    assert err.message.endswith(".")


def test_missing_field() -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        parse_json_body(b'{"model": "sim-small"}', ChatCompletionRequest)
    assert info.value.param == "messages"
    assert "Field required" in info.value.message


def test_several_errors_are_counted() -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        parse_json_body(b'{"model": 3, "messages": [], "max_tokens": "x"}', ChatCompletionRequest)
    assert info.value.param == "model"
    assert info.value.message.endswith("(and 2 more errors).")
    err = chat_error({"stop": 5})  # a union: one error per member
    assert err.message.endswith("(and 1 more error).")


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [(5, "valid string"), (["a", "b"], "exactly one prompt"), ([], "at least 1 item")],
)
def test_completion_prompt_union(prompt: object, fragment: str) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        parse_json_body(json.dumps({**COMPLETION, "prompt": prompt}).encode(), CompletionRequest)
    assert info.value.param == "prompt"
    assert fragment in info.value.message


def test_union_errors_describe_the_form_the_client_sent() -> None:
    err = chat_error({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]})
    assert err.param == "messages.0.content.0.text"


def test_valid_requests_parse() -> None:
    chat = parse_json_body(
        json.dumps(
            {
                **CHAT,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                    }
                ],
                "max_tokens": 5,
                "max_completion_tokens": 9,
                "temperature": 1,  # JSON has one number type: an integer is a valid float
                "stop": "END",
                "some_new_openai_field": {"x": 1},  # ignored, so a newer SDK does not break
            }
        ).encode(),
        ChatCompletionRequest,
    )
    assert chat.messages[0].text() == "ab"
    assert chat.effective_max_tokens() == 9
    assert chat.stop_list() == ["END"]
    assert chat.temperature == 1.0
    completion = parse_json_body(
        json.dumps({**COMPLETION, "prompt": ["only one"]}).encode(), CompletionRequest
    )
    assert completion.prompt_text() == "only one"
    assert completion.stop_list() == []
    assert completion.effective_max_tokens() is None


# --- body size ------------------------------------------------------------------------------------


async def test_body_within_the_limit_is_read_whole() -> None:
    body = await read_body(make_request(chunks=[b"abc", b"def"]), limit=6)
    assert body == b"abcdef"


async def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        await read_body(make_request({"content-length": "101"}, [b"x"]), limit=100)
    assert info.value.error_type == "request_too_large"
    assert "101" in info.value.message


async def test_streamed_body_over_the_limit_is_refused() -> None:
    with pytest.raises(PayloadTooLarge):
        await read_body(make_request(chunks=[b"x" * 60, b"x" * 60]), limit=100)


# --- headers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, 30.0),
        ({"x-request-timeout": "2.5"}, 2.5),
        ({"x-request-timeout": "5000"}, 600.0),  # capped
        ({"x-request-timeout": "inf"}, 600.0),
        ({"x-stainless-timeout": "12"}, 12.0),  # the openai SDK's header
        ({"x-request-timeout": "3", "x-stainless-timeout": "12"}, 3.0),
    ],
)
def test_timeout_header(headers: dict[str, str], expected: float) -> None:
    assert timeout_of(make_request(headers), default_s=30.0, max_s=600.0) == expected


@pytest.mark.parametrize(
    ("header", "value", "fragment"),
    [
        ("x-request-timeout", "soon", "must be a number of seconds"),
        ("x-request-timeout", "0", "must be positive"),
        ("x-request-timeout", "-1", "must be positive"),
        ("x-request-timeout", "nan", "must be positive"),
        ("x-stainless-timeout", "", "must be a number of seconds"),
    ],
)
def test_bad_timeout_header(header: str, value: str, fragment: str) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        timeout_of(make_request({header: value}), default_s=30.0, max_s=600.0)
    assert info.value.param == header
    assert fragment in info.value.message


def test_request_id_is_kept_when_safe_and_generated_otherwise() -> None:
    assert request_id_of(make_request({"x-request-id": "req-abc.123:x_y"})) == "req-abc.123:x_y"
    for bad in ("has space", "x" * 129, 'quote"', ""):
        generated = request_id_of(make_request({"x-request-id": bad}))
        assert generated != bad and len(generated) == 32 and int(generated, 16) >= 0
    assert request_id_of(make_request()) != request_id_of(make_request())


def test_idempotency_key() -> None:
    assert idempotency_key_of(make_request()) == ""
    assert idempotency_key_of(make_request({"idempotency-key": "k" * 255})) == "k" * 255
    for bad in ("k" * 256, "tab\there"):
        with pytest.raises(errors.InvalidArgument) as info:
            idempotency_key_of(make_request({"idempotency-key": bad}))
        assert info.value.param == "Idempotency-Key"
