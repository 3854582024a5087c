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
    client_attempt: int = 0  # 0: the first send of this request; n: the client's n-th retry


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


def client_retryable(record: Record) -> bool:
    """A cut connection or stream, or a status that says "try again": a client may send it again."""
    return record.status in (0, 429, 502, 503, 504) or (record.status == 200 and not record.ok)
