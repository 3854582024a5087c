"""The edge's SERVER span for each HTTP request, made with opentelemetry-instrumentation-asgi's own
helpers in a thinner middleware than FastAPIInstrumentor's.

Why not FastAPIInstrumentor on the hot path: for the same span it costs about a third more CPU
per request (benchmarks/http_spans.py: 178 µs over an untraced app against 115, with export, for a
request as the openai SDK sends it). It sets every request attribute twice, decodes every header
again for each of its header lookups, matches every route again to name the span, wraps the app in
a second error middleware and records OpenTelemetry HTTP metrics that the edge already keeps in
Prometheus. Here the span's attributes and status come from the library's own
`collect_request_attributes` and `set_status_code`, given only the headers they read, and its name
is the route as the instrumentor names it; a test compares the two spans for the same requests.
`AFTERSHOCK_EDGE_HTTP_TRACING=instrumentor` puts FastAPIInstrumentor back (its request hooks,
`OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*`, `OTEL_SEMCONV_STABILITY_OPT_IN` and its metrics);
these spans use the default (pre-stable) HTTP semantic conventions, as the instrumentor does
unless that variable is set.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry import context, trace
from opentelemetry.instrumentation.asgi import (
    asgi_getter,
    asgi_setter,
    collect_request_attributes,
    set_status_code,
)
from opentelemetry.instrumentation.propagators import get_global_response_propagator
from opentelemetry.propagate import extract, get_global_textmap
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE
from opentelemetry.trace import SpanKind, TracerProvider
from opentelemetry.util.http import sanitize_method
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The instrumentor's scope name, so that a trace looks the same whichever made the span.
SCOPE = "opentelemetry.instrumentation.fastapi"
# The request headers collect_request_attributes reads (the propagator's are added per request).
_ATTRIBUTE_HEADERS = frozenset({b"host", b"user-agent"})


class ServerSpans:
    """ASGI middleware: one SERVER span per HTTP request, current while the app handles it.

    `routes` are the app's route paths (the edge's are all static); a request to one of them is
    named "METHOD /path" with `http.route`, any other just "METHOD". `excluded` paths (probes)
    get no span."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Collection[str],
        excluded: Collection[str] = (),
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.app = app
        self.routes = frozenset(routes)
        self.excluded = frozenset(excluded)
        self.tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        self._textmap: object = None
        self._wanted: frozenset[bytes] = _ATTRIBUTE_HEADERS

    def _wanted_headers(self) -> frozenset[bytes]:
        """The headers the span is made from; derived again only when the global propagator is
        replaced (its `fields` builds a new set on every call)."""
        textmap = get_global_textmap()
        if textmap is not self._textmap:
            self._textmap = textmap
            self._wanted = _ATTRIBUTE_HEADERS | {name.encode() for name in textmap.fields}
        return self._wanted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.excluded:
            await self.app(scope, receive, send)
            return
        method = sanitize_method(scope["method"])
        if method == "_OTHER":
            method = "HTTP"
        # The library's helpers decode every header for each one they look up (six lookups; an
        # SDK client sends ~17 headers), so they get the headers they read and no others.
        wanted = self._wanted_headers()
        narrow = {**scope, "headers": [item for item in scope["headers"] if item[0] in wanted]}
        attributes: dict[str, Any] = collect_request_attributes(narrow)  # type: ignore[no-untyped-call]
        name = method
        if scope["path"] in self.routes:
            name = f"{method} {scope['path']}"
            attributes[HTTP_ROUTE] = scope["path"]
        parent = extract(narrow, getter=asgi_getter)
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        token = context.attach(trace.set_span_in_context(span))

        async def send_with_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                set_status_code(span, message["status"])  # type: ignore[no-untyped-call]
                propagator = get_global_response_propagator()  # type: ignore[no-untyped-call]
                if propagator is not None:
                    propagator.inject(message, context=trace.set_span_in_context(span), setter=asgi_setter)
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        except Exception as exc:
            # Starlette's ServerErrorMiddleware, outside this one, answers it with a 500 (the
            # status is ERROR, and the exception is on the span as an event).
            span.record_exception(exc)
            set_status_code(span, 500)  # type: ignore[no-untyped-call]
            raise
        finally:
            context.detach(token)
            span.end()
