"""Ports handed out for local stacks: outside the kernel's ephemeral range, free, never twice."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest
from aftershock import ports
from aftershock.ports import ephemeral_range, free_port, free_port_run


def test_ports_come_from_below_the_ephemeral_range() -> None:
    low, _ = ephemeral_range()
    picked = [free_port() for _ in range(200)]
    assert all(10_000 <= p < low for p in picked), [p for p in picked if not 10_000 <= p < low]
    assert len(set(picked)) == len(picked), "a port was handed out twice"


def test_a_low_ephemeral_range_sends_ports_above_it() -> None:
    picked = [free_port(ephemeral=(10_500, 50_000)) for _ in range(50)]
    assert all(p > 50_000 for p in picked)


def test_the_range_is_read_from_the_kernel_file(tmp_path: Path) -> None:
    path = tmp_path / "ip_local_port_range"
    path.write_text("40000\t50000\n")
    assert ephemeral_range(path) == (40000, 50000)
    assert ephemeral_range(tmp_path / "missing") == (32768, 60999)


def test_a_run_is_consecutive_and_bindable() -> None:
    first = free_port_run(4)
    for port in range(first, first + 4):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


class _Scripted(random.Random):
    """Draws the given ports in order (the choice is the only thing made deterministic)."""

    def __init__(self, draws: list[int]) -> None:
        super().__init__()
        self.draws = draws

    def choice(self, seq):  # type: ignore[no-untyped-def, override]
        return self.draws.pop(0)


def test_a_port_in_use_or_handed_out_before_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    given = free_port()
    # Not handed out by an earlier test in this process either (free_port would skip it).
    spares = [
        p
        for p in range(11_000, 12_000)
        if p != given and p not in ports._handed_out and ports._bindable("127.0.0.1", p)
    ][:2]
    monkeypatch.setattr(ports, "_rng", _Scripted([given, spares[0]]))
    assert free_port() == spares[0]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        # An ephemeral range above the listener's port makes that port a candidate.
        monkeypatch.setattr(ports, "_rng", _Scripted([busy, spares[1]]))
        assert free_port(ephemeral=(62_000, 64_000)) == spares[1]
