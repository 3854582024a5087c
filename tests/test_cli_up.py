"""`aftershock up` as a user runs it (the console script): ports printed, serving, a clean stop on
SIGTERM; with --chaos --redis, a fault proxy on every hop driven by toxiproxy-python, and dedupe."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from aftershock import topology
from aftershock.faultproxy.client import ToxiproxyClient
from aftershock.inference.sim_tokens import expected_text
from aftershock.ports import free_port

from tests.polling import wait_for
from tests.scrape import scraped

UP_TIMEOUT_S = 60.0
E2E_MODELS = Path(__file__).resolve().parent / "e2e" / "models.yaml"
TOXIC_LATENCY_S = 1.5  # well above a loaded machine's own latency, so the toxic is what is seen


def _reader(stream: object, lines: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
        lines.put(line)
    lines.put("")  # EOF


def _next_line(lines: queue.Queue[str], deadline: float) -> str:
    try:
        return lines.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        raise AssertionError("aftershock up printed nothing in time") from None


def _refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


AFTERSHOCK = Path(sys.executable).with_name("aftershock")  # the console script a user runs
Up = tuple[subprocess.Popen[str], queue.Queue[str], int]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Up]]:
    """Starts `aftershock up ARGS` as a user would; the edge port is chosen here."""
    started: list[subprocess.Popen[str]] = []
    log = open(tmp_path / "up.log", "w")

    def start(*args: str) -> Up:
        assert AFTERSHOCK.exists(), f"{AFTERSHOCK} missing: pip install -e ."
        edge_port = free_port()
        proc = subprocess.Popen(
            [str(AFTERSHOCK), "up", "--edge-port", str(edge_port), *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        started.append(proc)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
        return proc, lines, edge_port

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:  # a failed test: stop it the way a user would, then for sure
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        log.close()


def banner(up: Up, lines_after: int) -> str:
    """The lines `aftershock up` prints once the stack is ready: the banner and `lines_after` more."""
    proc, lines, _ = up
    deadline = time.monotonic() + UP_TIMEOUT_S
    text: list[str] = []
    while not any("Aftershock is up" in line for line in text):
        line = _next_line(lines, deadline)
        assert line, f"aftershock up exited early with {proc.wait()}"
        text.append(line)
    # The other lines follow the banner in the same write.
    for _ in range(lines_after):
        text.append(_next_line(lines, deadline))
    return "".join(text)


def test_up_serves_and_stops_cleanly_on_sigterm(launch: Callable[..., Up]) -> None:
    up = launch("--replicas", "1")
    proc, lines, edge_port = up
    text = banner(up, 3)
    assert f"http://127.0.0.1:{edge_port}" in text
    ports = [int(p) for p in re.findall(r"(?:http|grpc|metrics) (\d+)", text)]
    assert edge_port in ports and len(ports) == 6, text  # edge, backend, inference-0: service + metrics

    base = f"http://127.0.0.1:{edge_port}"
    assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
    resp = httpx.post(
        f"{base}/v1/completions",
        json={"model": "sim-small", "prompt": "hello up", "max_tokens": 5, "seed": 3},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"] == expected_text("sim-small", "hello up", 3, 5)
    metrics_port = ports[ports.index(edge_port) + 1]
    assert (
        "aftershock_requests_total" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    )

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    rest = ""
    while line := _next_line(lines, time.monotonic() + 5):
        rest += line
    stopped = re.search(r"stopped: (.*)", rest)
    assert stopped, rest
    assert all(part.endswith("=0") for part in stopped.group(1).split(", ")), stopped.group(1)
    # Nothing left behind: every printed port stops answering.
    assert [p for p in ports if not _refuses(p)] == []


def _completion_s(base: str, **headers: str) -> tuple[float, str]:
    start = time.monotonic()
    resp = httpx.post(
        f"{base}/v1/completions",
        json={"model": "sim-fast", "prompt": "through the proxies", "max_tokens": 4, "seed": 7},
        headers=headers,
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return time.monotonic() - start, resp.json()["choices"][0]["text"]


def test_up_with_chaos_and_redis_proxies_every_hop_and_dedupes(launch: Callable[..., Up]) -> None:
    up = launch("--chaos", "--redis", "--replicas", "2", "--models-file", str(E2E_MODELS))
    # edge, backend, 2 replicas, redis, fault proxy, then one line per proxy (2 + 3).
    text = banner(up, 11)
    base = f"http://127.0.0.1:{up[2]}"
    services = {name: int(port) for name, port in re.findall(r"^  (\S+)\s+(?:http|grpc) (\d+)", text, re.M)}
    redis_port = re.search(r"^  redis\s+redis://127\.0\.0\.1:(\d+)/0", text, re.M)
    api = re.search(r"Toxiproxy API\) http://127\.0\.0\.1:(\d+)", text)
    assert redis_port and api, text
    proxies = {
        n: (listen, upstream)
        for n, listen, upstream in re.findall(r"^    (\w+)\s+(\S+) -> (\S+)$", text, re.M)
    }
    # Every hop goes through a proxy named as in aftershock.topology, in front of the real service.
    upstream_port = {n: int(up.rsplit(":", 1)[1]) for n, (_, up) in proxies.items()}
    assert upstream_port == {
        topology.EDGE_BACKEND: services["backend"],
        topology.backend_inference(0): services["inference-0"],
        topology.backend_inference(1): services["inference-1"],
        topology.BACKEND_REDIS: int(redis_port.group(1)),
        topology.EDGE_REDIS: int(redis_port.group(1)),
    }, text

    # A toxic through toxiproxy-python: latency on edge->backend slows every request by that much.
    client = ToxiproxyClient("127.0.0.1", int(api.group(1)))
    assert set(client.proxies()) == set(proxies)
    quick, _ = _completion_s(base)
    assert quick < TOXIC_LATENCY_S, f"{quick:.2f}s before any toxic"
    edge_backend = client.get_proxy(topology.EDGE_BACKEND)
    edge_backend.add_toxic(type="latency", name="slow", attributes={"latency": int(TOXIC_LATENCY_S * 1000)})
    assert set(edge_backend.toxics()) == {"slow"}
    slowed, _ = _completion_s(base)
    assert slowed >= TOXIC_LATENCY_S, f"{slowed:.2f}s with a {TOXIC_LATENCY_S}s latency toxic"
    edge_backend.destroy_toxic("slow")
    assert _completion_s(base)[0] < TOXIC_LATENCY_S

    # Dedupe through Redis (behind backend_redis): the same Idempotency-Key twice is one generation,
    # by the engines' own counters. A third request with a fresh key bounds the count: any generation
    # the replay had caused would be counted before it.
    inference_metrics = [
        int(m) for m in re.findall(r"^  inference-\d+\s+grpc \d+  metrics (\d+)", text, re.M)
    ]

    def generations() -> float:
        return sum(
            scraped(port, "vllm:request_success_total", model_name="sim-fast") for port in inference_metrics
        )

    before = generations()
    first = _completion_s(base, **{"idempotency-key": "up-chaos-1"})[1]
    assert _completion_s(base, **{"idempotency-key": "up-chaos-1"})[1] == first
    _completion_s(base, **{"idempotency-key": "up-chaos-2"})
    wait_for(lambda: generations() >= before + 2, what="two generations counted")
    assert generations() == before + 2

    proc = up[0]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    # Nothing left behind: the fault proxy, its proxies and redis-server stop answering too.
    ports = [int(api.group(1)), int(redis_port.group(1)), *services.values()]
    ports += [int(listen.rsplit(":", 1)[1]) for listen, _ in proxies.values()]
    assert [p for p in ports if not _refuses(p)] == []


def test_up_with_workers_runs_two_edge_and_backend_processes(launch: Callable[..., Up]) -> None:
    up = launch("--replicas", "1", "--workers", "2")
    proc, _, edge_port = up
    text = banner(up, 3)
    found = re.search(r"edge\s+http \d+\s+2 workers, metrics from (\d+)", text)
    assert found, text
    edge_metrics = int(found.group(1))
    assert re.search(r"backend\s+grpc \d+\s+2 workers, metrics from \d+", text), text
    body = {"model": "sim-small", "prompt": "workers", "max_tokens": 2}
    for _ in range(30):  # a new connection each time: SO_REUSEPORT spreads connections
        resp = httpx.post(
            f"http://127.0.0.1:{edge_port}/v1/completions", json=body, headers={"connection": "close"}
        )
        assert resp.status_code == 200, resp.text
    served = [scraped(edge_metrics + i, "aftershock_requests_total", service="edge") for i in range(2)]
    assert sum(served) == 30 and min(served) > 0, served
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
