"""`aftershock up`: the whole stack on this machine until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from aftershock import logs
from aftershock.stack import Stack, StackConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackOptions:
    edge_port: int = 8000
    replicas: int = 2
    models_file: Path | None = None
    ready_timeout_s: float = 60.0
    # A fault proxy (Toxiproxy API) on every hop, proxies named as in aftershock.topology.
    chaos: bool = False
    # A local redis-server for the backend's dedupe and the edge's rate limits.
    redis: bool = False
    # Processes each for the edge and the backend (SO_REUSEPORT); metrics on metrics port + i.
    workers: int = 1


def run_stack(options: StackOptions) -> int:
    logs.configure("up")
    # A plain flag: a threading.Event set from a signal handler can deadlock against its own wait().
    stopping: list[int] = []

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    stack = Stack(
        StackConfig(
            replicas=options.replicas,
            edge_port=options.edge_port,
            models_file=options.models_file,
            chaos=options.chaos,
            redis=options.redis,
            workers=options.workers,
        )
    )
    try:
        stack.start(ready_timeout_s=options.ready_timeout_s)
    except (RuntimeError, TimeoutError) as exc:
        print(f"aftershock up: {exc}", file=sys.stderr)
        stack.stop()
        return 1
    assert stack.backend is not None and stack.edge is not None
    lines = [f"Aftershock is up: {stack.edge_url}  (Ctrl-C stops it)"]
    metrics = "metrics" if options.workers == 1 else f"{options.workers} workers, metrics from"
    lines.append(f"  edge       http {stack.edge.port}  {metrics} {stack.edge.metrics_port}")
    lines.append(f"  backend    grpc {stack.backend.port}  {metrics} {stack.backend.metrics_port}")
    for p in stack.inference:
        lines.append(f"  {p.name:<10} grpc {p.port}  metrics {p.metrics_port}")
    if stack.redis is not None:
        lines.append(f"  redis      {stack.redis_url}  (backend dedupe, edge rate limits)")
    if stack.toxiproxy is not None:
        lines.append(
            f"  fault proxy (Toxiproxy API) {stack.toxiproxy_url}  metrics {stack.toxiproxy.metrics_port}"
        )
        for proxy in stack.proxies.values():
            lines.append(f"    {proxy.name:<22} {proxy.listen} -> {proxy.upstream}")
    print("\n".join(lines), flush=True)
    code = 0
    while not stopping:
        time.sleep(0.2)
        dead = [p for p in stack.procs() if not p.alive()]
        if dead:
            print(
                f"aftershock up: {dead[0].name} exited with {dead[0].popen.returncode}; stopping",
                file=sys.stderr,
            )
            code = 1
            break
    codes = stack.stop()
    print("stopped: " + ", ".join(f"{k}={v}" for k, v in codes.items()), flush=True)
    return code
