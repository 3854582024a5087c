"""Fixtures shared by the whole suite: a running stack of real processes, redis-server, and the
metric names aftershock.metrics exposes. Helpers live in their own modules: tests/stack_support.py
(running_stack), tests/scrape.py (reading /metrics), tests/polling.py (waiting for a condition)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import aftershock.metrics as metrics_module
import pytest
from aftershock.metrics.common import new_registry
from aftershock.stack import Stack
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from tests.servers import RedisServer, start_redis
from tests.stack_support import ARTIFACTS as ARTIFACTS
from tests.stack_support import TESTS as TESTS
from tests.stack_support import running_stack


@pytest.fixture(scope="session")
def exposed() -> dict[str, set[str]]:
    """Sample name -> label names, from instantiating every metrics class in aftershock.metrics and
    the registry every service starts from: what dashboards and alert rules may refer to."""
    samples: dict[str, set[str]] = {}
    classes = [
        cls
        for _, cls in inspect.getmembers(metrics_module, inspect.isclass)
        if cls.__module__.startswith(metrics_module.__name__ + ".")
        and "registry" in inspect.signature(cls).parameters
    ]
    assert classes, "no metric classes found in aftershock.metrics"
    # Every metrics port also shows the process's CPU, memory and garbage collection.
    registries = [new_registry()]
    for cls in classes:
        registry = CollectorRegistry()
        params = inspect.signature(cls).parameters
        instance = cls(**({"registry": registry} | ({"service": "test"} if "service" in params else {})))
        for value in vars(instance).values():
            # A labelled metric exposes no samples until it has a child; make one of each.
            if isinstance(value, MetricWrapperBase) and value._is_parent():  # type: ignore[no-untyped-call]
                value.labels(*["x"] * len(value._labelnames))
        registries.append(registry)
    for registry in registries:
        for family in registry.collect():
            for sample in family.samples:
                samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """Two inference replicas, a backend and an edge as real processes on loopback, shared by a
    module's tests; a module that needs other settings uses running_stack itself."""
    with running_stack(request.module.__name__.rsplit(".", 1)[-1], shutdown_grace_s=5) as s:
        yield s


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the whole session; tests that stop it must restart it."""
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    return redis_server.url
