"""Samples the services' own metrics during a drill: breaker states, retries, failovers, dedupe."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

# Counters worth charting and judging, summed over their labels unless a label is named.
_COUNTERS = (
    "aftershock_retries_total",
    "aftershock_retry_budget_exhausted_total",
    "aftershock_failovers_total",
    "aftershock_shed_requests_total",
    "aftershock_upstream_requests_total",
)
# Counters judged on one label set only, kept under their own names.
RESUMED_FAILOVERS = "aftershock_failovers_resumed"
HEDGES_STARTED = "aftershock_hedges_started"
_LABELLED = {
    RESUMED_FAILOVERS: ("aftershock_failovers_total", {"phase": "mid_stream", "outcome": "resumed"}),
    HEDGES_STARTED: ("aftershock_hedges_total", {"outcome": "started"}),
}


@dataclass
class Sample:
    t: float
    breakers: dict[str, int]  # target -> 0 closed, 1 open, 2 half-open
    counters: dict[str, float]
    dedupe: dict[str, float]  # outcome -> count
    replicas: dict[str, int] = field(default_factory=dict)  # replica -> 1 healthy, 0 not
    # replica -> 1 when routing would send it a new request (for every model), 0 when not
    routable: dict[str, int] = field(default_factory=dict)
    served: dict[str, float] = field(default_factory=dict)  # replica -> tries it answered OK


@dataclass
class MetricsSampler:
    """Scrapes a backend's /metrics every `interval_s` on a thread until stopped."""

    url: str
    start: float
    interval_s: float = 0.5
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drill-sampler", daemon=True)

    def begin(self) -> None:
        self._thread.start()

    def end(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(5)
        self.sample()
        return self.samples

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        try:
            text = httpx.get(self.url, timeout=2).text
        except httpx.HTTPError:
            return  # a missed sample is a gap in the chart, not a failed drill
        breakers: dict[str, int] = {}
        counters: dict[str, float] = dict.fromkeys((*_COUNTERS, *_LABELLED), 0.0)
        dedupe: dict[str, float] = {}
        replicas: dict[str, int] = {}
        routable: dict[str, int] = {}
        served: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "aftershock_breaker_state":
                    breakers[s.labels["target"]] = int(s.value)
                elif s.name == "aftershock_replica_healthy":
                    replicas[s.labels["replica"]] = int(s.value)
                elif s.name == "aftershock_replica_routable":
                    name = s.labels["replica"]
                    routable[name] = min(routable.get(name, 1), int(s.value))
                elif s.name == "aftershock_dedupe_requests_total":
                    dedupe[s.labels["outcome"]] = s.value
                elif s.name in counters:
                    counters[s.name] += s.value
                    if s.name == "aftershock_upstream_requests_total" and s.labels.get("code") == "OK":
                        served[s.labels["replica"]] = s.value
                for key, (name, labels) in _LABELLED.items():
                    if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                        counters[key] += s.value
        t = time.monotonic() - self.start
        self.samples.append(Sample(t, breakers, counters, dedupe, replicas, routable, served))


def wait_routable(url: str, replicas: int, timeout_s: float) -> None:
    """Waits until the backend at `url` (its /metrics) would route to `replicas` replicas."""
    deadline = time.monotonic() + timeout_s
    probe = MetricsSampler(url, time.monotonic())
    while time.monotonic() < deadline:
        probe.sample()
        if probe.samples and sum(probe.samples[-1].routable.values()) >= replicas:
            return
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {replicas} replicas routable after {timeout_s}s")
