"""Process start-up shared by every service: event loop choice and logging."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any

from aftershock import logs, sentry, tracing


def run(service: str, log_level: str, coro: Coroutine[Any, Any, None]) -> int:
    logs.configure(service, log_level)
    tracing.configure_tracing(service)
    sentry.configure(service)
    if os.environ.get("AFTERSHOCK_EVENT_LOOP") == "asyncio":
        asyncio.run(coro)
        return 0
    try:
        import uvloop
    except ImportError:  # uvloop is not built for every platform; asyncio's loop still works
        asyncio.run(coro)
    else:
        uvloop.run(coro)
    return 0
