"""Malformed and extreme requests against a real edge over a real backend: never a 5xx, every refusal
in OpenAI's error shape, every success a well-formed response.

Thousands of hypothesis-generated requests (bounded, deadline off) plus a hand list of the cases
that broke before (a max_tokens of 2^32 answered 500 in plain text).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.edge.live import FUZZ_MODEL, in_thread, sim_edge

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
BASES: dict[str, dict[str, Any]] = {
    CHAT: {"model": FUZZ_MODEL.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
    COMPLETIONS: {"model": FUZZ_MODEL.name, "prompt": "Once", "max_tokens": 3},
}
FIELDS = [
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "user",
    "logprobs",
    "top_logprobs",
]
NUMBER_FIELDS = ["max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "seed", "top_logprobs"]
EXTREME_NUMBERS = [
    "0", "-0", "-0.0", "1", "-1", "0.5", "1e-400", "1e400", "-1e400", "1E+308", "4294967295",
    "4294967296", "18446744073709551616", "9223372036854775807", "9223372036854775808",
    "-9223372036854775808", "-9223372036854775809", "1" + "0" * 400, "1e9999999999", "NaN",
    "Infinity", "-Infinity", "true", "false", "null", "1.0", "2.0000000000000001",
]  # fmt: skip


def bounded(n: int) -> settings:
    """n examples, no deadline (a loopback round trip varies), derandomized: the same cases each run."""
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with in_thread(lambda: sim_edge(tmp)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def assert_contract(resp: httpx.Response, *, slow_ok: bool = False) -> None:
    """No 5xx; a refusal is OpenAI's error JSON; a success is a completion or a clean SSE stream."""
    allowed_5xx = {504} if slow_ok else set()
    assert resp.status_code < 500 or resp.status_code in allowed_5xx, (resp.status_code, resp.text[:300])
    ctype = resp.headers.get("content-type", "")
    if resp.status_code != 200:
        assert ctype.startswith("application/json"), (resp.status_code, ctype, resp.text[:300])
        error = resp.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]
        assert resp.headers.get("x-request-id")
        return
    if resp.request.url.path in ("/v1/models", "/openapi.json"):
        assert ctype.startswith("application/json")
        assert isinstance(resp.json(), dict)
    elif ctype.startswith("text/event-stream"):
        events = [e for e in resp.text.split("\n\n") if e]
        assert events[-1] == "data: [DONE]", events[-3:]
        for event in events[:-1]:
            chunk = json.loads(event.removeprefix("data: "))
            assert "error" not in chunk, chunk
            assert chunk["object"] in ("chat.completion.chunk", "text_completion")
    else:
        body = resp.json()
        assert body["object"] in ("chat.completion", "text_completion"), body
        assert body["choices"][0]["finish_reason"] in ("stop", "length")


def post_raw(http: httpx.Client, path: str, body: bytes, **headers: str) -> httpx.Response:
    return http.post(path, content=body, headers={"content-type": "application/json", **headers})


# --- the hand list ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("field", NUMBER_FIELDS)
@pytest.mark.parametrize("literal", EXTREME_NUMBERS)
def test_extreme_number_literals(http: httpx.Client, path: str, field: str, literal: str) -> None:
    # Spliced as raw text: NaN, Infinity, -0 and 400-digit integers are not what json.dumps writes.
    body = json.dumps({**BASES[path], field: "@@"}).replace('"@@"', literal).encode()
    resp = post_raw(http, path, body)
    assert_contract(resp)


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("value", [2**32, 2**32 + 7, 2**64, 2**100])
def test_max_tokens_beyond_uint32_is_a_400(http: httpx.Client, path: str, value: int) -> None:
    for field in ("max_tokens", "max_completion_tokens") if path == CHAT else ("max_tokens",):
        resp = http.post(path, json={**BASES[path], field: value})
        assert_contract(resp)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == field


NASTY_BODIES = [
    b"",
    b"null",
    b"{}",
    b"[]",
    b'"x"',
    b"{" * 5000 + b"}" * 5000,
    b"[" * 100_000,
    b'{"model": "sim-fuzz", "messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"model": "\\udfff", "messages": [{"role": "user", "content": "x"}]}',
    b'{"model": "sim-fuzz", "messages": [{"role": "user", "content": "\\u0000"}], "stop": ["\\u0000"]}',
    b'{"model": "sim-fuzz", "prompt": "x", "stop": "\\ud83d"}',
    b'{"model": "sim-fuzz", "messages": [{"role": "user", "content": "x", "name": "\\udc00"}]}',
    b'{"model": "sim-fuzz", "messages": [{"role": "user", "content": "x"}], "user": "\\ud800"}',
    b'{"model": "sim-fuzz", "prompt": "x", "max_tokens": 1, "max_tokens": 2}',
    b'{"model": "sim-fuzz", "messages": [{"role": "user", "content": "x"}]} trailing',
    b'\xef\xbb\xbf{"model": "sim-fuzz", "prompt": "x"}',
    b'{"model": "sim-fuzz", "prompt": "x", "max_tokens": 3',
    b"\x00\x01\x02",
    b'{"model": "' + b"m" * 100_000 + b'", "prompt": "x"}',
    b'{"model": "sim-fuzz", "prompt": ["' + b'x", "' * 10_000 + b'"]}',
]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("body", NASTY_BODIES, ids=lambda b: repr(b[:30]))
def test_nasty_bodies(http: httpx.Client, path: str, body: bytes) -> None:
    assert_contract(post_raw(http, path, body))


@pytest.mark.parametrize("header", ["x-request-timeout", "x-stainless-timeout"])
@pytest.mark.parametrize(
    "value",
    [b"nan", b"inf", b"-inf", b"1e999", b"-0", b"0x10", b"1_000", b"+5", b"1e-320", b"", b"\xe9", b"9" * 400],
)
def test_timeout_headers(http: httpx.Client, header: str, value: bytes) -> None:
    resp = http.post(CHAT, json=BASES[CHAT], headers={header: value})
    # A timeout the client set too short to answer in is the client's own 504.
    assert_contract(resp, slow_ok=True)


# --- generated ---------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=4,
)
# Mostly well-formed messages with one odd part, so that validation gets past the outer layers.
roles = st.sampled_from(["user", "system", "assistant", "developer", "tool", "wizard", ""]) | json_scalars
contents = st.text(max_size=20) | st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text()})
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": roles},
        optional={"content": contents | json_values, "name": st.text(max_size=8) | json_scalars},
    )
    | json_values,
    max_size=3,
)


numbers = st.one_of(
    st.integers(),
    st.integers(min_value=2**31, max_value=2**70),
    st.integers(min_value=-(2**70), max_value=-(2**31)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid request with one to three fields removed or replaced by any JSON value."""
    path = draw(st.sampled_from([CHAT, COMPLETIONS]))
    body = dict(BASES[path])
    for field in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
        if field in body and draw(st.integers(0, 4)) == 0:
            del body[field]
        elif field == "messages":
            body[field] = draw(messages)
        elif field in NUMBER_FIELDS:
            body[field] = draw(numbers | json_values)
        else:
            body[field] = draw(json_values)
    return path, body


@bounded(1000)
@given(requests())
def test_generated_bodies(http: httpx.Client, case: tuple[str, dict[str, Any]]) -> None:
    path, body = case
    # json.dumps writes NaN and Infinity as those literals, as a careless client would.
    assert_contract(post_raw(http, path, json.dumps(body).encode()))


@bounded(200)
@given(st.sampled_from([CHAT, COMPLETIONS]), st.binary(max_size=200))
def test_generated_bytes(http: httpx.Client, path: str, body: bytes) -> None:
    assert_contract(post_raw(http, path, body))


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip)
number_text = st.one_of(
    st.floats().map(repr), st.integers().map(str), header_text, st.sampled_from(EXTREME_NUMBERS)
)


@bounded(300)
@given(
    st.dictionaries(
        st.sampled_from(["x-request-timeout", "x-stainless-timeout", "idempotency-key", "x-request-id"]),
        number_text,
        max_size=3,
    ),
    st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    st.sampled_from([CHAT, COMPLETIONS, "/v1/models", "/v1/nope", "/openapi.json"]),
)
def test_generated_headers_and_routes(
    http: httpx.Client, headers: dict[str, str], method: str, path: str
) -> None:
    body = json.dumps(BASES.get(path, {})).encode()
    resp = http.request(method, path, content=body, headers={"content-type": "application/json", **headers})
    assert_contract(resp, slow_ok=True)
