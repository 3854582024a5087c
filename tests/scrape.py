"""The one Prometheus text reader of the suite: scrape a /metrics port, then sum samples."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, host: str = "127.0.0.1") -> Samples:
    """One /metrics scrape as {(sample name, sorted labels): value}."""
    text = httpx.get(f"http://{host}:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def scraped(port: int, name: str, host: str = "127.0.0.1", **labels: str) -> float:
    """`metric` of a fresh scrape: what a polling predicate reads."""
    return metric(scrape(port, host), name, **labels)
