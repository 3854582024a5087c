"""The one way the suite runs a whole stack of real processes (inference replicas, backend, edge,
and on request the fault proxy and redis-server): `running_stack(...)`, parameterized by what a test
needs, its logs kept per test under ARTIFACTS."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aftershock.stack import Stack, StackConfig

TESTS = Path(__file__).resolve().parent
ARTIFACTS = Path(os.environ.get("AFTERSHOCK_TEST_ARTIFACTS", "/tmp/aftershock-test-artifacts"))
E2E_MODELS = TESTS / "e2e" / "models.yaml"


@contextmanager
def running_stack(
    name: str,
    *,
    replicas: int = 2,
    models_file: Path = E2E_MODELS,
    env: dict[str, dict[str, str]] | None = None,
    shutdown_grace_s: float = 10.0,
    chaos: bool = False,
    redis: bool = False,
    ready_timeout_s: float = 60.0,
    workers: int = 1,
) -> Iterator[Stack]:
    """A started stack, logs under ARTIFACTS/<name>, stopped whatever happens. `env` is extra
    environment per service ({"inference": ..., "backend": ..., "edge": ...})."""
    stack = Stack(
        StackConfig(
            replicas=replicas,
            models_file=models_file,
            log_dir=ARTIFACTS / name,
            shutdown_grace_s=shutdown_grace_s,
            env=env or {},
            chaos=chaos,
            redis=redis,
            workers=workers,
        )
    )
    try:
        stack.start(ready_timeout_s=ready_timeout_s)
        yield stack
    finally:
        # A test may leave a process frozen (SIGSTOP); it could not drain or exit on SIGTERM.
        for proc in stack.procs():
            if proc.alive():
                proc.popen.send_signal(signal.SIGCONT)
        stack.stop()
