"""Free loopback ports for local stacks and tests.

A port is handed out first and bound later by another process, sometimes a second or two later on
a loaded machine. Asking the kernel for port 0 would give one from its ephemeral range, the same
range it assigns to every outgoing connection, and under load (a drill, a benchmark) one of those
connections can take the port before the service binds it: the service then dies with "address
already in use". So ports are drawn at random from below the ephemeral range, where the kernel
never puts a connection, and never twice from one process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000  # below this live the well-known and registered services a machine may run
_handed_out: set[int] = set()
_rng = random.Random()


def ephemeral_range(path: Path = _EPHEMERAL_RANGE) -> tuple[int, int]:
    """The kernel's range for outgoing connections (Linux's default where it cannot be read)."""
    try:
        low, high = path.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _candidates(ephemeral: tuple[int, int]) -> range:
    low, high = ephemeral
    if low - _LOWEST >= 1_000:
        return range(_LOWEST, low)
    # An ephemeral range starting low leaves no room below it: take the room above it.
    return range(high + 1, 65_536)


def free_port(host: str = "127.0.0.1", ephemeral: tuple[int, int] | None = None) -> int:
    """A port nothing listens on now and no outgoing connection will take before it is bound."""
    return free_port_run(1, host, ephemeral)


def free_port_run(count: int, host: str = "127.0.0.1", ephemeral: tuple[int, int] | None = None) -> int:
    """The first of `count` consecutive free ports (workers' metrics ports)."""
    candidates = _candidates(ephemeral or ephemeral_range())
    if len(candidates) < 1_000:
        # The ephemeral range covers nearly every port: no port is safe from it, any will do.
        candidates = range(1_024, 65_536)
    for _ in range(200):
        first = _rng.choice(candidates[: len(candidates) - count + 1])
        run = range(first, first + count)
        if any(p in _handed_out for p in run) or not all(_bindable(host, p) for p in run):
            continue
        _handed_out.update(run)
        return first
    raise OSError(f"no run of {count} free ports in {candidates.start}-{candidates.stop - 1}")
