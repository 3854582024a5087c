"""span_encoding.encode against the OTLP exporter's own encoder, over real SDK spans of every shape:
the same message and the same bytes, or the in-place encoder is wrong."""

from __future__ import annotations

import inspect
import logging

import pytest
from aftershock.span_encoding import InPlaceOTLPSpanExporter, encode
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.exporter import OTLPExporterMixin
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from tests.otlp_receiver import start_receiver


def _provider(
    resource: Resource, kept: InMemorySpanExporter, limits: SpanLimits | None = None
) -> TracerProvider:
    provider = TracerProvider(resource=resource, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(kept))
    return provider


_REMOTE = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "x1"), ("other", "y2")]),
)
_ATTRIBUTES = {
    "s": "text",
    "empty": "",
    "b": True,
    "f": False,
    "i": 7,
    "neg": -(2**63),
    "max": 2**63 - 1,
    "big": 2**70,  # beyond int64: the library logs it and leaves it out
    "d": 0.25,
    "zero": 0.0,
    "strs": ("a", "b"),
    "ints": [1, 2, 3],
    "bools": (True, False),
    "floats": (1.5,),
    "none_in_seq": ("a", None),
    "empty_seq": (),
}


def _spans() -> list[ReadableSpan]:
    kept = InMemorySpanExporter()
    first = _provider(Resource.create({"service.name": "one", "n": 1}), kept)
    second = _provider(
        Resource({"service.name": "two"}, schema_url="https://opentelemetry.io/schemas/1.21.0"),
        kept,
        SpanLimits(
            max_attributes=3, max_events=1, max_links=1, max_event_attributes=1, max_link_attributes=1
        ),
    )
    tracers = [
        first.get_tracer("plain"),
        first.get_tracer(
            "versioned", "1.2", schema_url="https://example/schema", attributes={"scope.k": "v"}
        ),
        second.get_tracer("limited"),
    ]
    remote_parent = trace.set_span_in_context(NonRecordingSpan(_REMOTE))
    for tracer in tracers:
        for kind in SpanKind:
            with tracer.start_as_current_span(f"root-{kind.name}", kind=kind, attributes=_ATTRIBUTES) as root:
                root.add_event("bare")
                # Last, so a one-event limit keeps it and its one-attribute limit drops one.
                root.add_event("first", {"k": "v", "n": 2}, timestamp=123)
                with tracer.start_as_current_span(
                    "child", links=[Link(_REMOTE), Link(_REMOTE, {"link.k": 1, "j": "x"})]
                ):
                    pass
                root.set_status(Status(StatusCode.ERROR, "it broke"))
            with tracer.start_as_current_span("remote-child", context=remote_parent) as span:
                span.set_status(Status(StatusCode.OK))
                span.add_event("unicode", {"é": "ü"})
            span = tracer.start_span("never-ended-link", links=[Link(root.get_span_context())])
            span.end(end_time=span.start_time)  # type: ignore[attr-defined]
    return list(kept.get_finished_spans())


def test_same_message_and_bytes_as_the_library_encoder(caplog: pytest.LogCaptureFixture) -> None:
    spans = _spans()
    with caplog.at_level(logging.ERROR):
        expected = encode_spans(spans)
        got = encode(spans)
    assert got == expected
    assert got.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)
    # The fixture covers what it claims: two resources, three scopes, every kind, a dropped value.
    assert len(got.resource_spans) == 2
    assert sum(len(r.scope_spans) for r in got.resource_spans) == 3
    assert {s.kind for r in got.resource_spans for ss in r.scope_spans for s in ss.spans} == {1, 2, 3, 4, 5}
    every = [s for r in got.resource_spans for ss in r.scope_spans for s in ss.spans]
    assert any(s.dropped_attributes_count for s in every)
    assert any(e.dropped_attributes_count for s in every for e in s.events)
    assert any(s.dropped_events_count for s in every) and any(s.dropped_links_count for s in every)
    assert "big" in caplog.text  # the int beyond int64 went the library's way, which logs it


def test_interleaved_groups_are_merged_as_the_library_merges_them() -> None:
    spans = _spans()
    shuffled = spans[::2] + spans[1::2][::-1]
    assert encode(shuffled) == encode_spans(shuffled)
    assert encode([]) == encode_spans([])


def test_the_exporter_seam_is_still_the_library_s() -> None:
    """If the library renamed or reshaped `_translate_data`, the override would silently stop being
    used (correct, but slow again): this says so instead."""
    assert "_translate_data" in vars(OTLPSpanExporter)
    assert "_translate_data" in vars(InPlaceOTLPSpanExporter)
    assert inspect.signature(InPlaceOTLPSpanExporter._translate_data, eval_str=True) == inspect.signature(
        OTLPSpanExporter._translate_data, eval_str=True
    )
    # ...and the export path still goes through it.
    assert "self._translate_data(" in inspect.getsource(OTLPExporterMixin)


def test_exports_to_a_real_receiver() -> None:
    server, receiver, port = start_receiver()
    try:
        exporter = InPlaceOTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True)
        spans = _spans()
        assert exporter.export(spans).name == "SUCCESS"
        exporter.shutdown()
        assert sorted(s.name for s in receiver.all()) == sorted(s.name for s in spans)
    finally:
        server.stop(None)
