"""Server-Sent Events framing, written once: `data: <json>` and a blank line, as pre-encoded bytes.

The chunk encoders (responses.py) splice their pre-encoded JSON between DATA and END, so an event
costs one small orjson call. FastAPI's generic SSE path costs several times more CPU per event on
this architecture.
"""

from __future__ import annotations

from typing import Any

import orjson

DATA = b"data: "
END = b"\n\n"
DONE = DATA + b"[DONE]" + END
MEDIA_TYPE = "text/event-stream"
# No caching, and no proxy buffering (nginx honours x-accel-buffering): each event goes out at once.
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def event(payload: dict[str, Any]) -> bytes:
    return DATA + orjson.dumps(payload) + END


def error_event(error: dict[str, Any]) -> bytes:
    """A failure after the first byte was sent: an error event in OpenAI's shape; the stream then ends."""
    return event({"error": error})
