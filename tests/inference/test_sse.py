"""SseData: `data:` payloads from an SSE body however the network splits it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aftershock.inference.sse import SseData

BODY = b'data: {"a": 1}\r\n\r\n: a comment\n\nevent: x\ndata: {"b": 2}\n\ndata: [DONE]\n\n'


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


async def _all(events: SseData) -> tuple[list[bytes], int]:
    out: list[bytes] = []
    reads = 0
    while True:
        data = events.pop()
        if data is not None:
            out.append(data)
            continue
        reads += 1
        if not await events.fill():
            return out, reads


async def test_payloads_are_the_same_however_the_body_is_split() -> None:
    want = [b'{"a": 1}', b'{"b": 2}', b"[DONE]"]
    for size in (1, 2, 3, 7, 16, len(BODY)):
        got, _ = await _all(SseData(_chunks(BODY, size)))
        assert got == want, size


async def test_one_read_yields_every_event_it_carries() -> None:
    got, reads = await _all(SseData(_chunks(BODY, len(BODY))))
    assert len(got) == 3 and reads == 2  # the one chunk, then the end of the body


async def test_an_unterminated_last_line_still_counts() -> None:
    got, _ = await _all(SseData(_chunks(b'data: {"a": 1}\n\ndata: [DONE]', 5)))
    assert got == [b'{"a": 1}', b"[DONE]"]
