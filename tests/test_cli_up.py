"""`aftershock up` as a user runs it: ports printed, serving, and a clean stop on SIGTERM."""

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
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aftershock.inference.sim_tokens import expected_text
from aftershock.ports import free_port

UP_TIMEOUT_S = 60.0


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


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str], int]]:
    edge_port = free_port()
    log = open(tmp_path / "up.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aftershock", "up", "--edge-port", str(edge_port), "--replicas", "1"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    try:
        yield proc, lines, edge_port
    finally:
        if proc.poll() is None:  # a failed test: stop it the way a user would, then for sure
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def test_up_serves_and_stops_cleanly_on_sigterm(
    up: tuple[subprocess.Popen[str], queue.Queue[str], int],
) -> None:
    proc, lines, edge_port = up
    deadline = time.monotonic() + UP_TIMEOUT_S
    banner: list[str] = []
    while not any("Aftershock is up" in line for line in banner):
        line = _next_line(lines, deadline)
        assert line, f"aftershock up exited early with {proc.wait()}"
        banner.append(line)
    # The port lines follow the banner in the same write.
    while len(banner) < 4:
        banner.append(_next_line(lines, deadline))
    text = "".join(banner)
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
