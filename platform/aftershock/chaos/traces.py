"""A minimal OTLP/HTTP trace receiver for drills on a local stack: the stack exports its spans
here, so a drill can check that the trace ids clients saw in `traceparent` are ones Jaeger would
find (spans were exported for them), not merely 32 hex digits.

OTLP over HTTP (protobuf) rather than gRPC: the drill runs under Locust's gevent patching, where
the standard library's HTTP server works as is. The message types come from opentelemetry-proto."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from aftershock.chaos.check import Check, check
from aftershock.chaos.record import Record

# The backend's CLIENT span of every try on a replica carries this attribute (backend/attempt.py).
_BACKEND = "aftershock-backend"
_TRY_ATTRIBUTE = "aftershock.replica"


class TraceCollector:
    """Keeps, per trace id, the names of the services that exported spans for it and how many
    tries on a replica the backend made."""

    def __init__(self) -> None:
        self.services: dict[str, set[str]] = defaultdict(set)
        self.tries: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.add(request)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass  # one line per export batch would drown the drill's output

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="drill-otlp", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self) -> dict[str, str]:
        """What a service needs to export its spans here, promptly."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self._lock:
            for rs in request.resource_spans:
                service = next(
                    (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), ""
                )
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        trace_id = span.trace_id.hex()
                        self.services[trace_id].add(service)
                        if service == _BACKEND and any(a.key == _TRY_ATTRIBUTE for a in span.attributes):
                            self.tries[trace_id] += 1

    def found(self, trace_id: str) -> set[str]:
        with self._lock:
            return set(self.services.get(trace_id, ()))

    def with_tries(self, records: Sequence[Record]) -> list[Record]:
        """The records, each with the tries its trace shows where those are more than its response
        said: a stream resumed on another replica after its first token was retried, but its
        headers (x-aftershock-attempts) had gone out with that token."""
        with self._lock:
            tries = dict(self.tries)
        return [
            replace(r, attempts=tries[r.trace_id]) if tries.get(r.trace_id, 0) > r.attempts else r
            for r in records
        ]


def traces_check(records: Sequence[Record], collector: TraceCollector, limit: int = 100) -> Check:
    """Every trace id a report names (failed and retried requests, and some that succeeded) has
    spans from the edge and the backend among those the stack exported."""
    failed = [r.trace_id for r in records if not r.ok and r.trace_id]
    retried = [r.trace_id for r in records if r.attempts > 1 and r.trace_id]
    ok = [r.trace_id for r in records if r.ok and r.trace_id]
    wanted = list(dict.fromkeys([*failed[:50], *retried[:50], *ok[:: max(1, len(ok) // limit)]]))
    if not wanted:
        return check("trace ids found in exported traces", False, "no request carried a traceparent")
    missing = [t for t in wanted if not {"aftershock-edge", "aftershock-backend"} <= collector.found(t)]
    return check(
        "trace ids found in exported traces",
        not missing,
        f"{len(wanted) - len(missing)} of {len(wanted)} trace ids have edge and backend spans"
        + (f"; missing: {', '.join(missing[:3])}" if missing else ""),
    )
