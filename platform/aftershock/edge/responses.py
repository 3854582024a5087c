"""OpenAI's response shapes, built in one place: JSON bodies and SSE chunks for chat.completion and
text_completion, and the model list.

The two endpoints differ only in a few fragments (where the text goes in a choice, the object names,
whether a stream opens by announcing the role); each is a `ResponseShape`. A streamed chunk is the
constant JSON around the delta (pre-encoded once per stream) with the JSON-escaped text spliced in.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import orjson

from aftershock.edge import sse
from aftershock.v1 import generation_pb2 as pb

_FINISH_REASONS: dict[int, str] = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length"}


def finish_reason(reason: int) -> str:
    return _FINISH_REASONS.get(reason, "stop")


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class ResponseShape(Protocol):
    """What one endpoint's responses look like."""

    id_prefix: str
    object: str
    chunk_object: str
    operation: str  # the GenAI semantic-convention operation name
    # The delta's JSON around its text: between `"choices":[{"index":0,` and the finish reason.
    text_open: bytes
    text_close: bytes

    def choice(self, text: str, finish: str) -> dict[str, Any]: ...

    def finish_choice(self, finish: str) -> dict[str, Any]: ...

    def opening_choice(self) -> dict[str, Any] | None: ...


class ChatShape:
    id_prefix = "chatcmpl-"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    operation = "chat"
    text_open = b'"delta":{"content":'
    text_close = b"}"

    def choice(self, text: str, finish: str) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}

    def finish_choice(self, finish: str) -> dict[str, Any]:
        return {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}

    def opening_choice(self) -> dict[str, Any] | None:
        """The first chat chunk announces the assistant role, as OpenAI's do."""
        delta = {"role": "assistant", "content": ""}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}


class TextShape:
    id_prefix = "cmpl-"
    object = "text_completion"
    chunk_object = "text_completion"
    operation = "text_completion"
    text_open = b'"text":'
    text_close = b""

    def choice(self, text: str, finish: str) -> dict[str, Any]:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    def finish_choice(self, finish: str) -> dict[str, Any]:
        return self.choice("", finish)

    def opening_choice(self) -> dict[str, Any] | None:
        return None


CHAT = ChatShape()
TEXT = TextShape()


def body(
    shape: ResponseShape,
    *,
    completion_id: str,
    created: int,
    model: str,
    text: str,
    finish: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> bytes:
    """A whole non-streamed response."""
    return orjson.dumps(
        {
            "id": completion_id,
            "object": shape.object,
            "created": created,
            "model": model,
            "choices": [shape.choice(text, finish)],
            "usage": usage(prompt_tokens, completion_tokens),
        }
    )


def model_list(models: Iterable[pb.ModelInfo]) -> bytes:
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
    return orjson.dumps({"object": "list", "data": data})


class ChunkEncoder:
    """Encodes the SSE events of one stream."""

    def __init__(
        self, shape: ResponseShape, *, completion_id: str, created: int, model: str, include_usage: bool
    ) -> None:
        self.shape = shape
        self.include_usage = include_usage
        self._base: dict[str, Any] = {
            "id": completion_id,
            "object": shape.chunk_object,
            "created": created,
            "model": model,
        }
        usage_null = b',"usage":null' if include_usage else b""
        head = orjson.dumps(self._base)[:-1]  # drop the closing brace to append choices
        self._prefix = sse.DATA + head + b',"choices":[{"index":0,' + shape.text_open
        tail = b',"logprobs":null,"finish_reason":null}]' + usage_null + b"}"
        self._suffix = shape.text_close + tail + sse.END

    def opening(self) -> bytes:
        """What goes before the first delta (the chat role announcement), or nothing."""
        choice = self.shape.opening_choice()
        return b"" if choice is None else self._chunk([choice])

    def delta(self, text: str) -> bytes:
        return self._prefix + orjson.dumps(text) + self._suffix

    def finish(self, reason: str) -> bytes:
        return self._chunk([self.shape.finish_choice(reason)])

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        payload = dict(self._base)
        payload["choices"] = []
        payload["usage"] = usage(prompt_tokens, completion_tokens)
        return sse.event(payload)

    def _chunk(self, choices: list[dict[str, Any]]) -> bytes:
        payload = dict(self._base)
        payload["choices"] = choices
        if self.include_usage:
            payload["usage"] = None
        return sse.event(payload)


def served_as(
    first: pb.GenerateResponse, completion_id: str, created: int, model: str
) -> tuple[str, int, str]:
    """The id, created and model a response carries, given the backend's first message.

    The backend's dedupe sets the original response's id and created on a duplicate or a replay, so
    the client sees one response however often it asked; a fallback chain names the model that served.
    """
    if first.completion_id:
        completion_id = first.completion_id
        created = first.created or created
    return completion_id, created, first.model or model
