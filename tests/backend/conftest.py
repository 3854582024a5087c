"""Fixtures of the backend tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.backend.dedupe_harness import Harness


@pytest.fixture
async def h(redis_url: str) -> AsyncIterator[Harness]:
    """Dedupe instances on the session's redis-server, closed after the test."""
    harness = Harness(redis_url)
    yield harness
    for d in harness.instances:
        await d.close()
