"""A small SSE reader for tests: parses `data:` events off an httpx streaming response."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx


async def events(resp: httpx.Response) -> AsyncIterator[dict[str, Any] | str]:
    """Yields each event's JSON payload, or the string "[DONE]"."""
    buffer = ""
    async for text in resp.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            raw, buffer = buffer.split("\n\n", 1)
            for line in raw.splitlines():
                if line.startswith("data: "):
                    data = line[6:]
                    yield data if data == "[DONE]" else json.loads(data)


def content_of(event: dict[str, Any]) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "delta" in choice:
        return str(choice["delta"].get("content") or "")
    return str(choice.get("text") or "")
