"""Drills with model servers behind the replicas: their spec, their fault (set and cleared through a
real model server's control API), and each check they add failing when what it guards did not happen
(fed records and samples)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from aftershock.chaos.check import Check
from aftershock.chaos.faults import FaultInjector
from aftershock.chaos.model_servers import start_upstream
from aftershock.chaos.record import Record, Recorder
from aftershock.chaos.sampler import MetricsSampler, Sample
from aftershock.chaos.spec import Drill, load_drill
from aftershock.chaos.verdict import judge
from aftershock.metrics import BackendMetrics
from aftershock.ports import free_port
from prometheus_client import CollectorRegistry, start_http_server
from pydantic import ValidationError

from tests.chaos import fed
from tests.conftest import ARTIFACTS, TESTS

CHAOS = TESTS.parent / "chaos"
WHOLE = "no cut answer presented as complete"
NO_HANG = "no request outlived its deadline"
RETRY_AFTER = "Retry-After reached the client"


def _drill(name: str) -> Drill:
    return load_drill(CHAOS / f"{name}.yaml").scaled(0.5)


def _outcome(checks: list[Check], name: str) -> str:
    return next(c.outcome for c in checks if c.name == name)


def _answered(drill: Drill) -> list[Record]:
    """Seeded requests that each got their whole text."""
    return [
        dataclasses.replace(r, text=f"text {i}", expected=f"text {i}")
        for i, r in enumerate(fed.records(drill))
    ]


def test_a_cut_answer_presented_as_complete_fails() -> None:
    drill = _drill("model-server-faults")
    records = _answered(drill)
    assert _outcome(judge(drill, records, fed.healthy_samples(drill), None), WHOLE) == "pass"
    # A stream cut mid-answer that still ended with [DONE]: the client counted it a success.
    cut = dataclasses.replace(records[100], text=records[100].text[:4])
    assert cut.ok
    broken = [*records[:100], cut, *records[101:]]
    assert _outcome(judge(drill, broken, fed.healthy_samples(drill), None), WHOLE) == "fail"
    # Too few seeded answers compared proves nothing.
    unseeded = [dataclasses.replace(r, expected=None) for r in records]
    assert _outcome(judge(drill, unseeded, fed.healthy_samples(drill), None), WHOLE) == "fail"


def test_a_request_past_its_deadline_fails_even_when_the_drill_cut_it_off() -> None:
    drill = _drill("model-server-faults")
    records = _answered(drill)
    limit = drill.expect.max_latency_s
    assert limit is not None
    samples = fed.healthy_samples(drill)
    assert _outcome(judge(drill, records, samples, None, unfinished=[0.3]), NO_HANG) == "pass"
    slow = [*records, dataclasses.replace(records[0], latency_s=limit + 1)]
    assert _outcome(judge(drill, slow, samples, None), NO_HANG) == "fail"
    # A request still waiting when the load stopped leaves no record: only its age tells.
    assert _outcome(judge(drill, records, samples, None, unfinished=[0.3, limit + 5]), NO_HANG) == "fail"


def test_the_recorder_knows_which_requests_never_finished() -> None:
    recorder = Recorder(start=0.0)
    done, hung = recorder.open(1.0), recorder.open(2.0)
    recorder.add(Record(1.0, 0.5, None, True, 200, False), done)
    assert hung != done and recorder.unfinished(10.0) == [8.0]


def _refused(drill: Drill, retry_after: str) -> list[Record]:
    """Requests refused with 429 while the faults were on, the rest answered."""
    fault = (drill.fault_start_s, drill.fault_end_s)
    return [
        dataclasses.replace(r, ok=False, status=429, retry_after=retry_after)
        if fault[0] <= r.started < fault[1]
        else r
        for r in _answered(drill)
    ]


def test_a_retry_after_lost_or_made_up_on_the_way_fails() -> None:
    drill = _drill("model-server-retry-after")
    samples = fed.healthy_samples(drill)
    asked = next(f.model_server.retry_after_s for f in drill.faults if f.model_server is not None)
    assert _outcome(judge(drill, _refused(drill, str(asked)), samples, None), RETRY_AFTER) == "pass"
    assert _outcome(judge(drill, _refused(drill, ""), samples, None), RETRY_AFTER) == "fail"
    # A fixed wait in place of the server's (the "replaced by a fixed 1 s").
    assert _outcome(judge(drill, _refused(drill, "1"), samples, None), RETRY_AFTER) == "fail"
    assert _outcome(judge(drill, _answered(drill), samples, None), RETRY_AFTER) == "fail"


def _serving(drill: Drill, back_after_s: float | None, *, answering: bool = True) -> list[Sample]:
    """inference-0 ejected from the fault's start until `back_after_s` past the rollback (None: for
    good); it answers tries (when `answering`) whenever routable; inference-1 serves throughout."""
    out = []
    served = {"inference-0": 0.0, "inference-1": 0.0}
    for s in fed.healthy_samples(drill):
        ejected = s.t >= drill.fault_start_s and (
            back_after_s is None or s.t < drill.fault_end_s + back_after_s
        )
        routable = {"inference-0": 0 if ejected else 1, "inference-1": 1}
        served["inference-1"] += 3
        if not ejected and answering:
            served["inference-0"] += 3
        out.append(dataclasses.replace(s, routable=routable, served=dict(served)))
    return out


def test_a_replica_that_never_serves_again_fails() -> None:
    drill = _drill("replica-recovers")
    window = drill.expect.replica_serves_again_within_s
    assert window is not None
    records = _answered(drill)
    name = "replica inference-0 serves again"

    def outcome(samples: list[Sample]) -> str:
        return _outcome(judge(drill, records, samples, None), name)

    assert outcome(_serving(drill, 0.5)) == "pass"
    assert outcome(_serving(drill, None)) == "fail"  # the ejection never ends
    assert outcome(_serving(drill, window + 1)) == "fail"  # back, but later than its window
    assert outcome(_serving(drill, 0.5, answering=False)) == "fail"  # routable, but no traffic
    assert (
        _outcome(judge(drill, records, _serving(drill, None), None), "replica inference-1 serves again")
        == "pass"
    )


def test_the_sampler_reads_routing_and_answered_tries_per_replica() -> None:
    registry = CollectorRegistry()
    metrics = BackendMetrics(registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        metrics.upstream_requests_total.labels("inference-0", "OK").inc(7)
        metrics.upstream_requests_total.labels("inference-0", "UNAVAILABLE").inc(5)
        metrics.replica_routable.labels("a", "inference-0").set(1)
        metrics.replica_routable.labels("b", "inference-0").set(0)  # not routable for every model
        metrics.replica_routable.labels("a", "inference-1").set(1)
        sampler = MetricsSampler(f"http://127.0.0.1:{port}/metrics", 0.0)
        sampler.sample()
    finally:
        server.shutdown()
        thread.join(5)
    (s,) = sampler.samples
    assert s.routable == {"inference-0": 0, "inference-1": 1}
    assert s.served == {"inference-0": 7}


def _spec(**extra: Any) -> dict[str, Any]:
    fault = {"name": "f", "kind": "model_server", "replica": 0, "start_s": 1, "end_s": 2}
    return {
        "title": "t",
        "load": {"duration_s": 10, "model": "up-chat"},
        "upstream": {"models": ["up-chat"]},
        "faults": [{**fault, **extra.pop("fault", {})}],
        **extra,
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (_spec(fault={"model_server": {"kind": "cut"}}, upstream=None), "need an upstream block"),
        (_spec(), "needs a replica and a model_server fault"),
        (_spec(fault={"model_server": {"kind": "earthquake"}}), "stall_after"),
        (_spec(fault={"replica": 2, "model_server": {"kind": "cut"}}), "no replica 2"),
        (
            _spec(fault={"model_server": {"kind": "cut"}}, load={"model": "sim-slow"}),
            "not served by the upstream",
        ),
    ],
)
def test_bad_model_server_drills_say_what_is_wrong(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Drill.model_validate(spec)


def test_the_serve_again_window_scales_with_the_drill() -> None:
    drill = load_drill(CHAOS / "replica-recovers.yaml")
    window = drill.expect.replica_serves_again_within_s
    assert window is not None
    assert drill.scaled(0.5).expect.replica_serves_again_within_s == window / 2


def test_a_model_server_fault_is_set_and_cleared_through_the_control_api() -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    server = start_upstream(["up-chat"], log=ARTIFACTS / "model-server-fault.log")
    try:
        drill = Drill.model_validate(
            _spec(fault={"model_server": {"kind": "status", "status": 429, "retry_after_s": 3}})
        )
        (fault,) = drill.faults
        injector = FaultInjector("http://127.0.0.1:1", None, [server])
        injector.apply(fault)
        assert fault.model_server is not None
        assert server.stats()["fault"] == fault.model_server.model_dump()
        injector.rollback(fault)
        assert server.stats()["fault"]["kind"] == "none"
        with pytest.raises(RuntimeError, match="no model server behind replica 1"):
            FaultInjector("http://127.0.0.1:1", None, []).apply(fault.model_copy(update={"replica": 1}))
    finally:
        server.stop()
