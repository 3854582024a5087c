"""What a drill's clients saw, one record per request. Free of Locust, so verdicts and tests
can use it without Locust patching the standard library."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class Record:
    started: float  # seconds since the recorder's start
    latency_s: float
    ttft_s: float | None
    ok: bool
    status: int
    stream: bool
    error: str = ""
    trace_id: str = ""
    attempts: int = 1
    idempotency_key: str = ""
    text: str = ""


@dataclass
class Recorder:
    """Thread- and greenlet-safe list of records, timed from `start`."""

    start: float = field(default_factory=time.monotonic)
    records: list[Record] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: Record) -> None:
        with self._lock:
            self.records.append(record)

    def snapshot(self) -> list[Record]:
        with self._lock:
            return list(self.records)
