"""One HTTP exchange's record: what its metrics, span, response headers and request log need."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from opentelemetry.trace import Span

from aftershock.edge.schema import ChatCompletionRequest, CompletionRequest
from aftershock.metrics import UNKNOWN_MODEL, EdgeMetrics
from aftershock.tracing import (
    GEN_AI_FINISH_REASONS,
    GEN_AI_INPUT_TOKENS,
    GEN_AI_OPERATION,
    GEN_AI_OUTPUT_TOKENS,
    GEN_AI_REQUEST_MAX_TOKENS,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_REQUEST_SEED,
    GEN_AI_REQUEST_TEMPERATURE,
    GEN_AI_REQUEST_TOP_P,
    GEN_AI_RESPONSE_ID,
    trace_id_of,
)

log = logging.getLogger(__name__)

# Not in aftershock.tracing's list yet: the model that served, when a fallback picked another.
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"


@dataclass
class Exchange:
    request_id: str
    started: float
    span: Span
    model: str = UNKNOWN_MODEL  # the metrics label: a known model name or UNKNOWN_MODEL
    stream: bool = False
    rate_headers: Mapping[str, str] = field(default_factory=dict)
    attempts: int = 0
    # The model that served when a fallback chain chose another than the one asked for.
    served_model: str = ""

    def exemplar(self) -> dict[str, str] | None:
        trace_id = trace_id_of(self.span)
        return {"trace_id": trace_id} if trace_id else None

    def describe(
        self, parsed: ChatCompletionRequest | CompletionRequest, operation: str, completion_id: str
    ) -> None:
        """GenAI semantic-convention attributes on the request's span (never the prompt text)."""
        if not self.span.is_recording():
            return
        attrs: dict[str, str | int | float] = {
            GEN_AI_OPERATION: operation,
            GEN_AI_REQUEST_MODEL: parsed.model,
            GEN_AI_RESPONSE_ID: completion_id,
            "aftershock.request_id": self.request_id,
            "aftershock.stream": parsed.stream,
        }
        max_tokens = parsed.effective_max_tokens()
        if max_tokens is not None:
            attrs[GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
        if parsed.temperature is not None:
            attrs[GEN_AI_REQUEST_TEMPERATURE] = parsed.temperature
        if parsed.top_p is not None:
            attrs[GEN_AI_REQUEST_TOP_P] = parsed.top_p
        if parsed.seed is not None:
            attrs[GEN_AI_REQUEST_SEED] = parsed.seed
        self.span.set_attributes(attrs)

    def answered_as(self, completion_id: str, model: str) -> None:
        """The id and model the response carries (a replay's original id, a fallback's model)."""
        if self.span.is_recording():
            self.span.set_attributes({GEN_AI_RESPONSE_ID: completion_id, GEN_AI_RESPONSE_MODEL: model})

    def usage(self, prompt_tokens: int, completion_tokens: int, finish: str) -> None:
        self.span.set_attributes(
            {
                GEN_AI_INPUT_TOKENS: prompt_tokens,
                GEN_AI_OUTPUT_TOKENS: completion_tokens,
                GEN_AI_FINISH_REASONS: (finish,),
            }
        )

    def headers(self) -> dict[str, str]:
        """x-request-id always; traceparent so a user can find the request's trace in Jaeger."""
        headers = {"x-request-id": self.request_id, **self.rate_headers}
        if self.attempts > 1:
            # The backend retried (before the first token, for a stream): drills and clients can tell.
            headers["x-aftershock-attempts"] = str(self.attempts)
        if self.served_model:
            headers["x-aftershock-served-model"] = self.served_model
        ctx = self.span.get_span_context()
        if ctx.is_valid:
            headers["traceparent"] = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
        return headers

    def finish(self, metrics: EdgeMetrics, code: str, status: int) -> None:
        """Counts the request once it has ended (for a stream: after its last event)."""
        if code not in ("OK", "CANCELLED") and self.span.is_recording():
            # The outcome as a gRPC status name (the backend's, or the edge's own refusal): the call
            # to the backend has no CLIENT span of its own to carry it (completions.py).
            self.span.set_attribute("aftershock.grpc_status", code)
        elapsed = time.perf_counter() - self.started
        metrics.requests_total.labels("edge", self.model, code).inc()
        metrics.request_duration_seconds.labels(
            "edge", self.model, "true" if self.stream else "false"
        ).observe(elapsed, self.exemplar())
        metrics.http_responses_total.labels(str(status)).inc()
        if code not in ("OK", "CANCELLED"):
            log.info(
                "request failed", extra={"code": code, "status": status, "duration_s": round(elapsed, 4)}
            )
