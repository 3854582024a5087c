"""What a drill's clients saw, one record per request. Free of Locust, so verdicts and tests
can use it without Locust patching the standard library."""

from __future__ import annotations

import itertools
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
    # The whole text a seeded request must get (its text is a function of model, prompt and seed);
    # None for unseeded requests.
    expected: str | None = None
    retry_after: str = ""  # the Retry-After header of a refused request


@dataclass
class Recorder:
    """Thread- and greenlet-safe list of records, timed from `start`."""

    start: float = field(default_factory=time.monotonic)
    records: list[Record] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Requests sent and not yet recorded: token -> when sent (time.monotonic()).
    _open: dict[int, float] = field(default_factory=dict)
    _tokens: itertools.count[int] = field(default_factory=itertools.count)

    def open(self, sent: float) -> int:
        """Notes a request as sent; add(record, token) closes it."""
        with self._lock:
            token = next(self._tokens)
            self._open[token] = sent
            return token

    def add(self, record: Record, token: int | None = None) -> None:
        with self._lock:
            self.records.append(record)
            if token is not None:
                self._open.pop(token, None)

    def unfinished(self, now: float) -> list[float]:
        """How long each request still without a record has been waiting at `now` (a request a
        drill's end cut off leaves no record, so a hang would otherwise go unseen)."""
        with self._lock:
            return sorted(now - sent for sent in self._open.values())

    def snapshot(self) -> list[Record]:
        with self._lock:
            return list(self.records)


def client_retryable(record: Record) -> bool:
    """A cut connection or stream, or a status that says "try again": a client may send it again."""
    return record.status in (0, 429, 502, 503, 504) or (record.status == 200 and not record.ok)
