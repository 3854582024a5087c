"""A call's deadline as a point on the monotonic clock, so each hop passes on only what is left."""

from __future__ import annotations

import time
from typing import Any

import grpc


def deadline_of(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """When the caller stops waiting (time.monotonic()); None when it set no deadline."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def remaining_s(deadline: float | None) -> float | None:
    """Seconds left until `deadline` (negative once passed); None for no deadline."""
    return None if deadline is None else deadline - time.monotonic()
