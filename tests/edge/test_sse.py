"""SSE framing and the streamed chunk shapes: every chunk is one `data:` line of valid JSON in OpenAI's
shape, text survives exactly."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aftershock.edge import responses, sse

TRICKY = [
    "plain",
    ' "quoted" ',
    "line one\nline two\r\n\n",
    "back\\slash \\n not a newline",
    "ünïcödé — “smart” ☃ 漢字 😀",
    "\x00\x1f control \t tab",
    "\u2028\u2029 separators",
    "</script><!-- -->",
    "data: [DONE]\n\n",
    "",
]


def parse(event: bytes) -> Any:
    """One SSE event: `data: <payload>` + blank line, with no raw newline inside the payload."""
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    payload = event[len(b"data: ") : -2]
    assert b"\n" not in payload and b"\r" not in payload, "a raw newline would split the event"
    return json.loads(payload.decode("utf-8"))


def split_events(stream: bytes) -> list[bytes]:
    parts = stream.split(b"\n\n")
    assert parts[-1] == b""
    return [p + b"\n\n" for p in parts[:-1]]


def encoder(chat: bool, include_usage: bool) -> responses.ChunkEncoder:
    return responses.ChunkEncoder(
        responses.CHAT if chat else responses.TEXT,
        completion_id="cmpl-abc",
        created=1_700_000_000,
        model="sim-small",
        include_usage=include_usage,
    )


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("text", TRICKY)
def test_chat_delta_round_trips(text: str, include_usage: bool) -> None:
    chunk = parse(encoder(True, include_usage).delta(text))
    assert chunk["id"] == "cmpl-abc"
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["created"] == 1_700_000_000
    assert chunk["model"] == "sim-small"
    assert chunk["choices"] == [
        {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
    ]
    if include_usage:
        assert "usage" in chunk and chunk["usage"] is None
    else:
        assert "usage" not in chunk


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("text", TRICKY)
def test_completion_delta_round_trips(text: str, include_usage: bool) -> None:
    chunk = parse(encoder(False, include_usage).delta(text))
    assert chunk["object"] == "text_completion"
    assert chunk["choices"] == [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}]
    assert ("usage" in chunk) is include_usage


def test_chat_role_chunk() -> None:
    chunk = parse(encoder(True, False).opening())
    assert chunk["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert "usage" not in chunk
    assert parse(encoder(True, True).opening())["usage"] is None
    assert encoder(False, True).opening() == b""  # a text completion stream opens with its first text


@pytest.mark.parametrize("include_usage", [False, True])
def test_finish_chunks(include_usage: bool) -> None:
    chat = parse(encoder(True, include_usage).finish("length"))
    assert chat["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]
    text = parse(encoder(False, include_usage).finish("stop"))
    assert text["choices"] == [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]
    for chunk in (chat, text):
        assert ("usage" in chunk) is include_usage
        if include_usage:
            assert chunk["usage"] is None


@pytest.mark.parametrize("chat", [True, False])
def test_usage_chunk(chat: bool) -> None:
    chunk = parse(encoder(chat, True).usage(7, 5))
    assert chunk["choices"] == []
    assert chunk["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    assert chunk["id"] == "cmpl-abc" and chunk["model"] == "sim-small"
    assert chunk["object"] == ("chat.completion.chunk" if chat else "text_completion")


def test_done_and_error_framing() -> None:
    assert sse.DONE == b"data: [DONE]\n\n"
    error = {"message": 'deadline "passed"\nsorry', "type": "server_error", "param": None, "code": "timeout"}
    assert parse(sse.error_event(error)) == {"error": error}
    assert parse(sse.event({"a": [1, "ü"]})) == {"a": [1, "ü"]}


@pytest.mark.parametrize("chat", [True, False])
def test_a_whole_stream_reassembles_the_text(chat: bool) -> None:
    enc = encoder(chat, True)
    pieces = [p for p in TRICKY if p]
    stream = enc.opening() + b"".join(enc.delta(p) for p in pieces)
    stream += enc.finish("stop") + enc.usage(3, len(pieces)) + sse.DONE
    events = split_events(stream)
    assert events[-1] == sse.DONE
    chunks = [parse(e) for e in events[:-1]]
    # The SSE split above is naive: it only works because no payload holds a blank line.
    key = "delta" if chat else "text"
    text = "".join(
        (c["choices"][0]["delta"].get("content", "") if chat else c["choices"][0]["text"])
        for c in chunks
        if c["choices"] and key in c["choices"][0]
    )
    assert text == "".join(pieces)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == len(pieces)
    assert len({c["id"] for c in chunks}) == 1
