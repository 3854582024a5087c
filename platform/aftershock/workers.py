"""Several processes of one service on one port: `aftershock edge|backend --workers N`.

One CPython process uses about one core, so a service scales across cores as processes. Every
worker binds the same port with SO_REUSEPORT (gRPC servers set it by default on Linux; the edge
binds its socket itself, see edge/service.py) and the kernel spreads new *connections* among them,
so a caller needs several connections to reach every worker (the edge's `--backend-channels`).

What is per worker, by design:
- Metrics: worker i serves /metrics on `metrics_port + i` (0 keeps them all off); scrape each one
  and sum in PromQL, as for replicas. Counters are never merged in-process.
- Breakers, retry budget, routing load and the edge's local state (model cache, in-flight limit)
  are each worker's own; dedupe and Redis rate limits are shared through Redis.

This process only supervises: it forwards SIGTERM/SIGINT to the workers, waits for them to drain,
and stops the rest (exiting with the failed worker's code) when one of them dies.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from aftershock.ports import free_port

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """A worker gets SIGTERM when its supervisor dies, even of SIGKILL (Linux only; else a no-op)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def worker_argv(
    service: str, argv: Sequence[str], port: int, metrics_port: int, index: int, extra: Sequence[str] = ()
) -> list[str]:
    """The command of worker `index`: the supervisor's own flags, then the worker's (last flag wins)."""
    return [
        sys.executable,
        "-m",
        "aftershock",
        service,
        *argv,
        "--workers",
        "1",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port + index if metrics_port else 0),
        *extra,
    ]


def supervise(
    service: str,
    argv: Sequence[str],
    *,
    workers: int,
    host: str,
    port: int,
    metrics_port: int,
    extra: Sequence[str] = (),
) -> int:
    """Runs `workers` copies of `aftershock <service> <argv>` on one port until a stop signal."""
    port = port or free_port(host)  # every worker must bind the same one
    stopping: list[int] = []

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    children = [
        subprocess.Popen(
            worker_argv(service, argv, port, metrics_port, i, extra), preexec_fn=_die_with_parent
        )
        for i in range(workers)
    ]
    log.info("workers started", extra={"workers": workers, "port": port, "pids": [c.pid for c in children]})
    code = 0
    while not stopping:
        dead = next((c for c in children if c.poll() is not None), None)
        if dead is not None:
            log.error("worker exited; stopping the others", extra={"pid": dead.pid, "code": dead.returncode})
            code = dead.returncode or 1
            break
        time.sleep(0.1)
    sig = stopping[0] if stopping else signal.SIGTERM
    for child in children:
        if child.poll() is None:
            child.send_signal(sig)
    codes = [child.wait() for child in children]
    return code or max(codes, default=0)
