"""Metric sets per service on their own registries, and the /metrics endpoint that serves them."""

from __future__ import annotations

import gc

import httpx
from aftershock.metrics import BackendMetrics, EdgeMetrics, EngineMetrics, HopMetrics, new_registry
from aftershock.metrics_http import render, start_metrics_server
from aftershock.ports import free_port
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families


def test_each_service_set_lives_on_its_own_registry() -> None:
    # Several services run in one test process: building every set twice must not collide.
    for _ in range(2):
        registry = new_registry()
        HopMetrics("inference", registry)
        EngineMetrics(registry)
        BackendMetrics(new_registry())
        EdgeMetrics(new_registry())
        names = {m.name for m in registry.collect()}
        assert "process_cpu_seconds" in names  # CPU and RSS on every /metrics port
        assert {
            "vllm:num_requests_running",
            "vllm:time_to_first_token_seconds",
            "aftershock_requests",
        } <= names


def test_vllm_names_survive_both_exposition_formats() -> None:
    registry = new_registry()
    engine = EngineMetrics(registry)
    engine.num_requests_running.labels("sim-small").set(2)
    engine.generation_tokens_total.labels("sim-small").inc(5)
    for accept in ("text/plain", "application/openmetrics-text; version=1.0.0"):
        body, content_type = render(registry, accept)
        text = body.decode()
        assert 'vllm:num_requests_running{model_name="sim-small"} 2.0' in text
        assert "vllm_num_requests_running" not in text
        assert ("openmetrics" in content_type) == ("openmetrics" in accept)
    plain, _ = render(registry, "")
    samples = {
        s.name: s.value for f in text_string_to_metric_families(plain.decode()) for s in f.samples if s.labels
    }
    assert samples["vllm:generation_tokens_total"] == 5


def test_metrics_port() -> None:
    assert start_metrics_server(0, "127.0.0.1", new_registry()) == 0  # 0 switches it off
    registry = new_registry()
    HopMetrics("edge", registry).requests_total.labels("edge", "m", "OK").inc()
    port = start_metrics_server(free_port(), "127.0.0.1", registry)
    for path in ("/metrics", "/", "/metrics?x=1"):
        resp = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
        assert resp.status_code == 200
        assert 'aftershock_requests_total{code="OK",model="m",service="edge"} 1.0' in resp.text
    assert httpx.get(f"http://127.0.0.1:{port}/other", timeout=5).status_code == 404
    om = httpx.get(
        f"http://127.0.0.1:{port}/metrics", headers={"accept": "application/openmetrics-text"}, timeout=5
    )
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")


def _gc_samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("generation", "")): s.value
        for m in registry.collect()
        if m.name.startswith("aftershock_gc_")
        for s in m.samples
    }


def test_gc_cpu_and_collections_by_generation() -> None:
    registry = new_registry()
    new_registry()  # a second registry in the same process must not count collections twice
    before = _gc_samples(registry)
    for _ in range(3):
        gc.collect()
    after = _gc_samples(registry)
    assert (
        after[("aftershock_gc_collections_total", "2")] - before[("aftershock_gc_collections_total", "2")]
        == 3
    )
    assert after[("aftershock_gc_cpu_seconds_total", "2")] > before[("aftershock_gc_cpu_seconds_total", "2")]
    assert after[("aftershock_gc_frozen_objects", "")] == gc.get_freeze_count()
    assert {g for (name, g) in after if name == "aftershock_gc_cpu_seconds_total"} == {"0", "1", "2"}
