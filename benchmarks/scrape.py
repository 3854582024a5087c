"""Sums of named samples from an Aftershock /metrics port, for benchmark figures (read with
prometheus_client's parser, so `vllm:*` names and labels need no hand parsing)."""

from __future__ import annotations

from collections.abc import Collection

import httpx
from prometheus_client.parser import text_string_to_metric_families

GC_CPU = "aftershock_gc_cpu_seconds_total"


def sample_sums(port: int, names: Collection[str]) -> dict[str, float]:
    """Each of `names` (sample names, `_total` included) summed over its labels; 0.0 if absent."""
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    sums = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name in sums:
                sums[sample.name] += sample.value
    return sums


def gc_cpu_seconds(port: int) -> float:
    """CPU a service spent collecting garbage, all generations: /proc cannot tell it apart."""
    return sample_sums(port, (GC_CPU,))[GC_CPU]
