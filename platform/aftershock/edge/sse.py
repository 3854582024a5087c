"""Server-Sent Events framing, written once, as pre-encoded bytes.

Each streamed chunk is the constant JSON around a delta (built once per stream) with the
JSON-escaped delta text spliced in, so an event costs one small orjson call. FastAPI's generic
SSE path costs several times more CPU per event on this architecture.
"""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def error_event(error: dict[str, Any]) -> bytes:
    """A failure after the first byte was sent: an error event in OpenAI's shape; the stream then ends."""
    return event({"error": error})


class ChunkEncoder:
    """Encodes the chunks of one stream (chat.completion.chunk or text_completion)."""

    def __init__(
        self, *, chat: bool, completion_id: str, created: int, model: str, include_usage: bool
    ) -> None:
        self.chat = chat
        self.include_usage = include_usage
        self._base: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
        }
        usage = b',"usage":null' if include_usage else b""
        head = orjson.dumps(self._base)[:-1]  # drop the closing brace to append choices
        if chat:
            self._prefix = head + b',"choices":[{"index":0,"delta":{"content":'
            self._suffix = b'},"logprobs":null,"finish_reason":null}]' + usage + b"}\n\n"
        else:
            self._prefix = head + b',"choices":[{"index":0,"text":'
            self._suffix = b',"logprobs":null,"finish_reason":null}]' + usage + b"}\n\n"

    def role(self) -> bytes:
        """The first chat chunk announces the assistant role, as OpenAI's do."""
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        return self._chunk([choice])

    def delta(self, text: str) -> bytes:
        return b"data: " + self._prefix + orjson.dumps(text) + self._suffix

    def finish(self, reason: str) -> bytes:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": reason}
        return self._chunk([choice])

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        payload = dict(self._base)
        payload["choices"] = []
        payload["usage"] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return event(payload)

    def _chunk(self, choices: list[dict[str, Any]]) -> bytes:
        payload = dict(self._base)
        payload["choices"] = choices
        if self.include_usage:
            payload["usage"] = None
        return event(payload)
