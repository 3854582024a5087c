"""W3C trace context over gRPC metadata, with one SERVER span per handled call and a CLIENT span per
outgoing call where the caller's own span does not already stand for it.

Why not opentelemetry-instrumentation-grpc: its aio server interceptor fails on handlers that
write through the context instead of yielding (grpc.health.v1 Watch), and its wrappers (plus
grpc.aio's intercepted-call machinery on the client) cost 15-30 µs of CPU per streamed message on
this architecture, where a message costs about 65 µs to send. The spans follow the same RPC
semantic conventions (rpc.system, rpc.service, rpc.method, rpc.grpc.status_code).
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

_tracer = trace.get_tracer("aftershock.rpc")
_PROPAGATED = frozenset({"traceparent", "tracestate", "baggage"})


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def extract(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    carrier = {k: (v if isinstance(v, str) else v.decode()) for k, v in (metadata or ()) if k in _PROPAGATED}
    return propagate.extract(carrier)


def start_server_span(
    method: str, metadata: Iterable[tuple[str, str | bytes]] | None, *, root: bool = True
) -> Span:
    """`root=False`: a call that arrives without a sampled trace gets no span of its own (a poll or a
    probe would otherwise start a trace of one span every time it runs)."""
    service, name = _split(method)
    context = extract(metadata)
    if not root and not trace.get_current_span(context).get_span_context().trace_flags.sampled:
        return trace.INVALID_SPAN
    return _tracer.start_span(
        method.lstrip("/"),
        context=context,
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )


def start_client_span(method: str, target: str) -> tuple[Span, tuple[tuple[str, str], ...]]:
    """A CLIENT span under the current one, and the metadata that carries it downstream."""
    service, name = _split(method)
    host, _, port = target.rpartition(":")
    span = _tracer.start_span(
        method.lstrip("/"),
        kind=SpanKind.CLIENT,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
            "server.address": host,
            "server.port": int(port) if port.isdigit() else 0,
        },
    )
    return span, outgoing_metadata(trace.set_span_in_context(span))


def outgoing_metadata(context: Context | None = None) -> tuple[tuple[str, str], ...]:
    """`context` (by default the current one, for a call the current span already stands for) as
    gRPC metadata."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return tuple(carrier.items())


def end_span(span: Span, code: grpc.StatusCode | str, message: str = "") -> None:
    name = code if isinstance(code, str) else code.name
    value = grpc.StatusCode[name].value[0] if name in grpc.StatusCode.__members__ else 2
    span.set_attribute("rpc.grpc.status_code", value)
    if name not in ("OK", "CANCELLED"):
        span.set_status(Status(StatusCode.ERROR, message or name))
    span.end()
