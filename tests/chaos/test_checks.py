"""Each kind of check fails when what it guards did not happen (fed samples and records), and the
sampler reads the labels the checks rest on from a real backend metrics registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from aftershock.chaos.check import Check
from aftershock.chaos.record import Record
from aftershock.chaos.sampler import RESUMED_FAILOVERS, MetricsSampler, Sample
from aftershock.chaos.spec import Drill, load_drill
from aftershock.chaos.verdict import judge, verdict_of
from aftershock.metrics import BackendMetrics
from aftershock.ports import free_port
from prometheus_client import CollectorRegistry, start_http_server

from tests.chaos import fed
from tests.conftest import TESTS

CHAOS = TESTS.parent / "chaos"


def _drill(name: str) -> Drill:
    return load_drill(CHAOS / f"{name}.yaml").scaled(0.5)


def _outcome(checks: list[Check], name: str) -> str:
    return next(c.outcome for c in checks if c.name == name)


def _edit(samples: list[Sample], change: Callable[[Sample], Sample]) -> list[Sample]:
    return [change(s) for s in samples]


def test_a_breaker_that_never_opens_fails() -> None:
    drill = _drill("reset-peer-backend-inference")
    samples = _edit(fed.healthy_samples(drill), lambda s: dataclasses.replace(s, breakers={}))
    checks = judge(drill, fed.records(drill), samples, None)
    assert _outcome(checks, "breaker inference:inference-0 opened") == "fail"


def test_a_breaker_that_stays_open_after_rollback_fails() -> None:
    drill = _drill("reset-peer-backend-inference")
    end = drill.fault_end_s
    window = drill.expect.breakers_close_within_s
    assert window is not None
    samples = _edit(
        fed.healthy_samples(drill),
        lambda s: dataclasses.replace(s, breakers={"inference:inference-0": 1 if s.t >= 2 else 0}),
    )
    checks = judge(drill, fed.records(drill), samples, None)
    assert _outcome(checks, "breaker inference:inference-0 opened") == "pass"
    assert _outcome(checks, "breaker inference:inference-0 closed again") == "fail"
    # Closing, but later than the recovery window allows, fails as well.
    late = _edit(
        fed.healthy_samples(drill),
        lambda s: dataclasses.replace(
            s, breakers={"inference:inference-0": int(2 <= s.t < end + window + 0.5)}
        ),
    )
    assert (
        _outcome(judge(drill, fed.records(drill), late, None), "breaker inference:inference-0 closed again")
        == "fail"
    )


def test_no_retries_fails() -> None:
    drill = _drill("reset-peer-backend-inference")
    samples = _edit(
        fed.healthy_samples(drill),
        lambda s: dataclasses.replace(s, counters={**s.counters, "aftershock_retries_total": 0.0}),
    )
    assert _outcome(judge(drill, fed.records(drill), samples, None), "retries happened") == "fail"


def test_failovers_that_were_not_resumed_streams_do_not_count() -> None:
    drill = _drill("replica-crash")
    samples = _edit(
        fed.healthy_samples(drill),
        lambda s: dataclasses.replace(s, counters={**s.counters, RESUMED_FAILOVERS: 0.0}),
    )
    checks = judge(drill, fed.records(drill), samples, None)
    assert _outcome(checks, "streams resumed mid-stream on another replica") == "fail"


def test_a_replica_left_dead_fails() -> None:
    drill = _drill("replica-crash")
    samples = _edit(
        fed.healthy_samples(drill),
        lambda s: dataclasses.replace(
            s, replicas={**s.replicas, "inference-0": int(s.t < drill.fault_start_s)}
        ),
    )
    assert (
        _outcome(judge(drill, fed.records(drill), samples, None), "every replica back in rotation") == "fail"
    )


@pytest.mark.parametrize("broken", ["nothing deduplicated", "some bypassed"])
def test_dedupe_that_does_not_resume_fails(broken: str) -> None:
    drill = _drill("redis-outage")

    def after(s: Sample) -> Sample:
        if s.t < drill.fault_end_s:
            return s
        if broken == "nothing deduplicated":
            return dataclasses.replace(s, dedupe={"claimed": 1.0, "replayed": 1.0, "bypassed": s.t})
        return dataclasses.replace(s, dedupe={**s.dedupe, "bypassed": s.t})

    checks = judge(drill, fed.records(drill), _edit(fed.healthy_samples(drill), after), None)
    assert _outcome(checks, "dedupe works again after the outage") == "fail"


def _keyed(drill: Drill, keys: int, repeats: int, same_text: bool = True) -> list[Record]:
    out = fed.records(drill)
    for i, r in enumerate(out[: keys * repeats]):
        key = i % keys
        out[i] = dataclasses.replace(r, idempotency_key=f"k{key}", text="a" if same_text or i < keys else "b")
    return out


def test_no_duplicate_generations_needs_repeated_keys_and_one_text_per_key() -> None:
    drill = _drill("latency-backend-redis")
    samples = fed.healthy_samples(drill)
    name = "no duplicate generations"
    assert _outcome(judge(drill, _keyed(drill, 20, 2), samples, None), name) == "pass"
    assert _outcome(judge(drill, _keyed(drill, 5, 2), samples, None), name) == "fail"  # too few repeats
    assert _outcome(judge(drill, _keyed(drill, 20, 2, same_text=False), samples, None), name) == "fail"


def test_retry_amplification_over_the_budget_fails() -> None:
    drill = _drill("retry-storm")
    records = fed.records(drill)
    limit = drill.expect.max_calls_per_request
    assert limit is not None

    def calls(per_request: float) -> list[Sample]:
        n = len(records) * per_request
        return [
            dataclasses.replace(s, counters={**s.counters, "aftershock_upstream_requests_total": n * i})
            for i, s in enumerate(fed.healthy_samples(drill)[-2:])
        ]

    assert _outcome(judge(drill, records, calls(limit * 0.95), None), "retry amplification") == "pass"
    assert _outcome(judge(drill, records, calls(limit * 1.1), None), "retry amplification") == "fail"


def test_a_hypothesis_the_fault_breaks_fails() -> None:
    drill = _drill("latency-edge-backend")
    broken = fed.records(drill, lambda t: t >= drill.fault_start_s)  # the fault never went away
    checks = judge(drill, broken, fed.healthy_samples(drill), None)
    assert verdict_of(checks) == "fail"
    assert _outcome(checks, "steady state: success rate") == "fail"


def test_the_sampler_counts_only_resumed_mid_stream_failovers() -> None:
    registry = CollectorRegistry()
    metrics = BackendMetrics(registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        metrics.failovers_total.labels("m", "before_first_token", "attempted").inc(5)
        metrics.failovers_total.labels("m", "mid_stream", "not_deterministic").inc(3)
        metrics.failovers_total.labels("m", "mid_stream", "resumed").inc(2)
        metrics.upstream_requests_total.labels("inference-0", "OK").inc(7)
        metrics.replica_healthy.labels("m", "inference-0").set(1)
        sampler = MetricsSampler(f"http://127.0.0.1:{port}/metrics", 0.0)
        sampler.sample()
    finally:
        server.shutdown()
        thread.join(5)
    (s,) = sampler.samples
    assert s.counters[RESUMED_FAILOVERS] == 2
    assert s.counters["aftershock_failovers_total"] == 10
    assert s.counters["aftershock_upstream_requests_total"] == 7
    assert s.replicas == {"inference-0": 1}
