"""The `data:` payloads of a server-sent-events body, split from raw network chunks.

Why not httpx's aiter_lines: it decodes every chunk to text and yields line by line, so a relay
awaits (and arms a timeout) once per line, two lines per event. Here the caller awaits once per
network read, which may carry many events, and takes the buffered payloads without awaiting.
Payloads stay bytes (orjson parses bytes). Only single-line `data:` fields are used, as every
OpenAI-compatible server sends them; comments, `event:` and `id:` lines are skipped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator


class SseData:
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._ready: deque[bytes] = deque()
        self._tail = b""
        self._ended = False

    def pop(self) -> bytes | None:
        """The next buffered payload, or None when fill() must read more."""
        return self._ready.popleft() if self._ready else None

    async def fill(self) -> bool:
        """Reads one chunk; False at the end of the body (an unterminated last line still counts)."""
        if self._ended:
            return False
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._ended = True
            self._line(self._tail)
            self._tail = b""
            return bool(self._ready)
        lines = (self._tail + chunk).split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            self._line(line)
        return True

    def _line(self, line: bytes) -> None:
        if line.startswith(b"data:"):
            self._ready.append(line[5:].strip())
