"""Fixtures shared by the whole suite: real service processes and a Prometheus text reader."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from pathlib import Path

import aftershock.metrics as metrics_module
import httpx
import pytest
from aftershock.stack import Stack, StackConfig
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import RedisServer, start_redis

TESTS = Path(__file__).resolve().parent
ARTIFACTS = Path(os.environ.get("AFTERSHOCK_TEST_ARTIFACTS", "/tmp/aftershock-test-artifacts"))


def scrape(port: int, host: str = "127.0.0.1") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One /metrics scrape as {(sample name, sorted labels): value}."""
    text = httpx.get(f"http://{host}:{port}/metrics", timeout=5).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


@pytest.fixture(scope="session")
def exposed() -> dict[str, set[str]]:
    """Sample name -> label names, from instantiating every metrics class in aftershock.metrics:
    what dashboards and alert rules may refer to."""
    samples: dict[str, set[str]] = {}
    classes = [
        cls
        for _, cls in inspect.getmembers(metrics_module, inspect.isclass)
        if cls.__module__ == metrics_module.__name__ and "registry" in inspect.signature(cls).parameters
    ]
    assert classes, "no metric classes found in aftershock.metrics"
    for cls in classes:
        registry = CollectorRegistry()
        params = inspect.signature(cls).parameters
        instance = cls(**({"registry": registry} | ({"service": "test"} if "service" in params else {})))
        for value in vars(instance).values():
            # A labelled metric exposes no samples until it has a child; make one of each.
            if isinstance(value, MetricWrapperBase) and value._is_parent():  # type: ignore[no-untyped-call]
                value.labels(*["x"] * len(value._labelnames))
        for family in registry.collect():
            for sample in family.samples:
                samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


@pytest.fixture(scope="session")
def e2e_models_file() -> Path:
    return TESTS / "e2e" / "models.yaml"


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, e2e_models_file: Path) -> Iterator[Stack]:
    """Two inference replicas, a backend and an edge as real processes on loopback."""
    log_dir = ARTIFACTS / request.module.__name__.rsplit(".", 1)[-1]
    s = Stack(StackConfig(replicas=2, models_file=e2e_models_file, log_dir=log_dir, shutdown_grace_s=5))
    try:
        s.start(ready_timeout_s=60)
        yield s
    finally:
        s.stop()


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
