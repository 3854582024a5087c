"""CPU and memory of a process from /proc (all threads included), for per-service cost figures, and
the share of the machine that its hypervisor took (steal), for reading latency beside it."""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and every live descendant (a server that forks workers, e.g. LiteLLM's)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu_seconds(p)
        except OSError:
            continue
        todo.extend(children.get(p, ()))
    return total


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class CpuWindow:
    """CPU seconds each named process spent between start() and stop()."""

    pids: dict[str, int]
    # Count each process's live descendants too.
    tree: bool = False

    def _read(self, pid: int) -> float:
        return tree_cpu_seconds(pid) if self.tree else cpu_seconds(pid)

    def start(self) -> None:
        self._start = {n: self._read(p) for n, p in self.pids.items()}

    def stop(self) -> dict[str, float]:
        return {n: self._read(p) - self._start[n] for n, p in self.pids.items()}


def machine_jiffies(stat: str | None = None) -> tuple[int, int]:
    """(steal, all) clock ticks of every CPU since boot, from /proc/stat's `cpu` line."""
    if stat is None:
        with open("/proc/stat") as f:
            stat = f.readline()
    # cpu  user nice system idle iowait irq softirq steal guest guest_nice (guests are in user/nice)
    ticks = [int(x) for x in stat.split()[1:9]]
    return ticks[7], sum(ticks)


class StealWindow:
    """The share of the machine's CPU time its hypervisor gave to others between start() and stop().
    A vCPU that is stolen from stalls whatever runs on it, so a latency tail means little without it."""

    def start(self) -> None:
        self._start = machine_jiffies()

    def stop(self) -> float:
        steal, total = machine_jiffies()
        spent = total - self._start[1]
        return 100.0 * (steal - self._start[0]) / spent if spent else 0.0
