"""CPU per span and per attribute of OTLP span encoding: the exporter library's encoder against
Aftershock's in-place one (platform/aftershock/span_encoding.py), in one process, interleaved.

    .venv/bin/python benchmarks/span_encoding.py [--rounds 5] [--quick]

Spans are real SDK spans (SERVER kind, a parent, one event) with 0, 5, 10 and 20 string/int
attributes, 512 to a batch as the batch processor sends them; each figure is encode plus serialize
(what the export thread does before the gRPC call), median over rounds. The per-attribute figure is
the slope between 0 and 20 attributes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from aftershock.span_encoding import encode
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

Encoder = Callable[[Sequence[ReadableSpan]], ExportTraceServiceRequest]
ENCODERS: dict[str, Encoder] = {"library": encode_spans, "in_place": encode}
ATTRIBUTE_COUNTS = (0, 5, 10, 20)


def make_spans(attributes: int, count: int) -> list[ReadableSpan]:
    kept = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    tracer = provider.get_tracer("bench")
    values = {f"attribute.name.{i}": (f"value-{i}" if i % 3 else i) for i in range(attributes)}
    with tracer.start_as_current_span("parent"):
        for _ in range(count):
            with tracer.start_as_current_span("POST /v1/chat/completions", kind=SpanKind.SERVER) as span:
                span.set_attributes(values)
                span.add_event("engine.first_token")
    return [s for s in kept.get_finished_spans() if s.name != "parent"]


def us_per_span(encoder: Encoder, spans: Sequence[ReadableSpan], repeats: int) -> float:
    started = time.process_time()
    for _ in range(repeats):
        encoder(spans).SerializeToString()
    return (time.process_time() - started) / repeats / len(spans) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one round, few repeats (a smoke run)")
    args = parser.parse_args(argv)
    rounds, repeats = (1, 2) if args.quick else (args.rounds, 20)
    batches = {n: make_spans(n, 512) for n in ATTRIBUTE_COUNTS}
    figures: dict[tuple[str, int], list[float]] = {(e, n): [] for e in ENCODERS for n in ATTRIBUTE_COUNTS}
    for _ in range(rounds):
        for n, spans in batches.items():
            for name, encoder in ENCODERS.items():  # interleaved: drift falls on both
                figures[(name, n)].append(us_per_span(encoder, spans, repeats))
    print(f"{'encoder':<10}" + "".join(f"{f'{n} attrs':>12}" for n in ATTRIBUTE_COUNTS) + f"{'per attr':>12}")
    for name in ENCODERS:
        medians = [statistics.median(figures[(name, n)]) for n in ATTRIBUTE_COUNTS]
        slope = (medians[-1] - medians[0]) / ATTRIBUTE_COUNTS[-1]
        print(f"{name:<10}" + "".join(f"{m:>12.1f}" for m in medians) + f"{slope:>12.2f}")
    print("µs of CPU per span (encode + serialize), median of", rounds, "round(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
