"""OpenTelemetry tracing set-up shared by every service.

Spans are always created (trace ids appear in logs, exemplars and the edge's `traceparent` header);
they are exported over OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific
variable) is set, through a batch processor. Sampling, service name and resource attributes follow
the SDK's own `OTEL_*` variables. Never a span per token: one span per hop; the engine's phases
are attributes and events on the inference hop's span.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span

# OpenTelemetry GenAI semantic-convention attribute names.
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_SYSTEM = "gen_ai.system"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_REQUEST_SEED = "gen_ai.request.seed"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
# The engine's phases, named as vLLM's own request spans name them (seconds).
GEN_AI_LATENCY_TIME_IN_QUEUE = "gen_ai.latency.time_in_queue"
GEN_AI_LATENCY_TIME_TO_FIRST_TOKEN = "gen_ai.latency.time_to_first_token"
GEN_AI_LATENCY_PREFILL = "gen_ai.latency.time_in_model_prefill"
GEN_AI_LATENCY_DECODE = "gen_ai.latency.time_in_model_decode"
GEN_AI_LATENCY_E2E = "gen_ai.latency.e2e"
# Span events on the inference hop's span: where the queue ended and where the first token came.
ENGINE_SCHEDULED = "engine.scheduled"
ENGINE_FIRST_TOKEN = "engine.first_token"

_configured = False


def exporting() -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true"


def configure_tracing(service: str) -> None:
    """Install the global tracer provider for this process (once); OTEL_SDK_DISABLED=true leaves the
    no-op provider in place, so spans cost next to nothing."""
    global _configured
    if _configured or disabled():
        return
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES; OTEL_SERVICE_NAME still wins over our default.
    name = os.environ.get("OTEL_SERVICE_NAME") or f"aftershock-{service}"
    resource = Resource.create({SERVICE_NAME: name, "service.namespace": "aftershock"})
    provider = TracerProvider(resource=resource)
    if exporting():
        provider.add_span_processor(BatchSpanProcessor(_exporter()))
    trace.set_tracer_provider(provider)
    _configured = True


def _exporter() -> SpanExporter:
    """OTLP over gRPC by default, encoding spans in place (span_encoding.py), or http/protobuf when
    OTEL_EXPORTER_OTLP(_TRACES)_PROTOCOL says so (the library's encoder: that exporter has no seam)."""
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    from aftershock.span_encoding import InPlaceOTLPSpanExporter

    return InPlaceOTLPSpanExporter()


def trace_id_of(span: Span) -> str | None:
    """The span's trace id as 32 hex digits, when it is sampled (for exemplars and headers)."""
    ctx = span.get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None
    return format(ctx.trace_id, "032x")


def exemplar() -> dict[str, str] | None:
    trace_id = trace_id_of(trace.get_current_span())
    return {"trace_id": trace_id} if trace_id else None
