"""Every PromQL expression in dashboards/ and alerts/ against a real Prometheus that scraped the
running stack under load: each must parse, and each dashboard query must return data (GPU panels
excepted where no GPU exists)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest
from aftershock import topology
from aftershock.stack import Stack

from tests.servers import PrometheusServer, start_prometheus
from tests.stack_support import TESTS, running_stack

pytestmark = pytest.mark.e2e

ROOT = TESTS.parent
sys.path.insert(0, str(ROOT / "dashboards" / "src"))
from aftershock_dashboards.queries import iter_queries  # noqa: E402


def _alert_rules() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "aftershock_alert_rules", TESTS / "alerts" / "alert_rules.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _traffic(stack: Stack, seconds: float) -> None:
    """Streams, non-streamed requests, and a few client errors, across both models."""
    until = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient, n: int) -> None:
        i = 0
        while time.monotonic() < until:
            i += 1
            model = "sim-slow" if i % 3 == 0 else "sim-fast"
            body: dict[str, Any] = {"model": model, "prompt": f"load {n} {i}", "max_tokens": 8, "seed": i}
            if i % 2:
                body["stream"] = True
            if i % 17 == 0:
                body["model"] = "no-such-model"
            async with client.stream("POST", f"{stack.edge_url}/v1/completions", json=body) as resp:
                await resp.aread()

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(worker(client, n) for n in range(6)))


@pytest.fixture(scope="module")
def scraped() -> Iterator[PrometheusServer]:
    # chaos=True: the fault proxy runs too, so the resilience dashboard's fault panels have data.
    with running_stack("test_prometheus", chaos=True) as stack:
        assert stack.edge and stack.backend
        jobs = {
            "aftershock-edge": [f"127.0.0.1:{stack.edge.metrics_port}"],
            "aftershock-backend": [f"127.0.0.1:{stack.backend.metrics_port}"],
            "aftershock-inference": [f"127.0.0.1:{p.metrics_port}" for p in stack.inference],
            "aftershock-faultproxy": [f"127.0.0.1:{stack.toxiproxy.metrics_port}"],  # type: ignore[union-attr]
        }
        prom = start_prometheus(jobs, sorted((ROOT / "alerts").glob("*.rules.yml")))
        try:
            # A harmless toxic stays on during the load, so "active faults" panels have a series.
            toxic = {"type": "latency", "stream": "downstream", "attributes": {"latency": 1}}
            httpx.post(
                f"{stack.toxiproxy_url}/proxies/{topology.EDGE_BACKEND}/toxics", json=toxic, timeout=5
            ).raise_for_status()
            asyncio.run(_traffic(stack, 8.0))
            time.sleep(2.5)  # a couple more scrapes and rule evaluations after the load
            yield prom
        finally:
            prom.stop()


def _query(prom: PrometheusServer, expr: str) -> dict[str, Any]:
    resp = httpx.get(f"{prom.url}/api/v1/query", params={"query": expr}, timeout=10)
    body: dict[str, Any] = resp.json()
    return body


def test_every_target_is_scraped_with_vllm_names_intact(scraped: PrometheusServer) -> None:
    up = _query(scraped, "up")["data"]["result"]
    assert len(up) == 5 and all(r["value"][1] == "1" for r in up), up
    running = _query(scraped, "vllm:num_requests_running")["data"]["result"]
    assert running, "vllm:* series must keep their colon (OpenMetrics escaping)"


def test_every_dashboard_query_parses_and_returns_data(scraped: PrometheusServer) -> None:
    empty: list[str] = []
    broken: list[str] = []
    count = 0
    for q in iter_queries():
        count += 1
        body = _query(scraped, q.resolved("1m"))
        where = f"{q.dashboard_uid} / {q.panel_title} [{q.ref_id}]: {q.expr}"
        if body.get("status") != "success":
            broken.append(f"{where} -> {body.get('error')}")
        elif q.expects_data and not body["data"]["result"]:
            empty.append(where)
    assert count > 20
    assert not broken, "\n".join(broken)
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_every_alert_expression_parses_and_rules_load(scraped: PrometheusServer) -> None:
    rules = _alert_rules()
    broken = []
    exprs = list(rules.iter_exprs())
    assert exprs
    for e in exprs:
        body = _query(scraped, e.expr)
        if body.get("status") != "success":
            broken.append(f"{e.source} {e.name}: {body.get('error')}")
    assert not broken, "\n".join(broken)
    groups = httpx.get(f"{scraped.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert loaded == {r.name for r in rules.iter_rules() if r.kind == "alert"}
    unhealthy = [r["name"] for g in groups for r in g["rules"] if r.get("health") not in ("ok", "unknown")]
    assert not unhealthy, unhealthy


def test_each_service_process_froze_its_start_up_heap(scraped: PrometheusServer) -> None:
    # aftershock.heap is called by each service's process entry point only: this is where it shows.
    result = _query(scraped, 'aftershock_gc_frozen_objects{job=~"aftershock-(edge|backend|inference)"}')
    frozen = {
        (r["metric"]["job"], r["metric"]["instance"]): float(r["value"][1]) for r in result["data"]["result"]
    }
    assert {job for job, _ in frozen} == {"aftershock-edge", "aftershock-backend", "aftershock-inference"}
    assert all(n > 20_000 for n in frozen.values()), frozen
    gc_cpu = _query(scraped, "sum by (job) (aftershock_gc_cpu_seconds_total)")["data"]["result"]
    assert len(gc_cpu) == 4, gc_cpu  # the fault proxy exports it too, unfrozen
