"""Per-request context carried implicitly through asyncio tasks (for logs and spans)."""

from __future__ import annotations

from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("aftershock_request_id", default="")
