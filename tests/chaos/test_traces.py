"""The drill's OTLP/HTTP trace receiver: which services a trace reached, and how many tries on a
replica the backend made, which a streamed response's headers cannot tell after its first token."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from aftershock.chaos.record import Record
from aftershock.chaos.traces import TraceCollector, traces_check
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

RESUMED = "a" * 32  # a stream that broke after its first token and resumed on the other replica
PLAIN = "b" * 32


def _attr(key: str, value: str) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))


def _spans(service: str, spans: list[tuple[str, str | None]]) -> trace_pb2.ResourceSpans:
    """spans: (trace id, replica tried or None)."""
    return trace_pb2.ResourceSpans(
        resource=resource_pb2.Resource(attributes=[_attr("service.name", service)]),
        scope_spans=[
            trace_pb2.ScopeSpans(
                spans=[
                    trace_pb2.Span(
                        trace_id=bytes.fromhex(tid),
                        span_id=bytes(8),
                        name="aftershock.v1.Inference/Generate",
                        attributes=[_attr("aftershock.replica", replica)] if replica else [],
                    )
                    for tid, replica in spans
                ]
            )
        ],
    )


@pytest.fixture
def collector() -> Iterator[TraceCollector]:
    c = TraceCollector()
    c.start()
    yield c
    c.stop()


def _export(collector: TraceCollector, *resource_spans: trace_pb2.ResourceSpans) -> None:
    body = trace_service_pb2.ExportTraceServiceRequest(resource_spans=resource_spans).SerializeToString()
    resp = httpx.post(
        f"{collector.endpoint}/v1/traces", content=body, headers={"content-type": "application/x-protobuf"}
    )
    assert resp.status_code == 200


def _record(trace_id: str, attempts: int = 1) -> Record:
    return Record(1.0, 0.3, 0.1, ok=True, status=200, stream=True, trace_id=trace_id, attempts=attempts)


def test_tries_the_backend_traced_count_where_the_response_said_less(collector: TraceCollector) -> None:
    _export(
        collector,
        _spans("aftershock-edge", [(RESUMED, None), (PLAIN, None)]),
        _spans("aftershock-backend", [(RESUMED, None), (RESUMED, "inference-0"), (RESUMED, "inference-1")]),
        _spans("aftershock-backend", [(PLAIN, None), (PLAIN, "inference-1")]),
        # The inference service names its replica too; its spans are not tries.
        _spans("aftershock-inference", [(PLAIN, "inference-1"), (PLAIN, "inference-1")]),
    )
    records = collector.with_tries([_record(RESUMED), _record(PLAIN), _record("c" * 32, attempts=2)])
    assert [r.attempts for r in records] == [2, 1, 2]
    assert collector.found(RESUMED) == {"aftershock-edge", "aftershock-backend"}
    check = traces_check(records, collector)
    assert check.outcome == "fail" and "missing: " + "c" * 32 in check.detail


def test_a_trace_without_backend_spans_fails_the_traces_check(collector: TraceCollector) -> None:
    _export(collector, _spans("aftershock-edge", [(PLAIN, None)]))
    check = traces_check([_record(PLAIN)], collector)
    assert check.outcome == "fail" and "0 of 1 trace ids" in check.detail
    _export(collector, _spans("aftershock-backend", [(PLAIN, "inference-0")]))
    assert traces_check([_record(PLAIN)], collector).outcome == "pass"
