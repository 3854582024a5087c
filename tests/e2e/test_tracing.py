"""One trace per request across edge, backend and inference, exported over OTLP to a real receiver."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest
from aftershock.stack import Stack
from aftershock.v1 import backend_pb2_grpc
from aftershock.v1 import generation_pb2 as pb

from tests.otlp_receiver import OtlpReceiver, ReceivedSpan, start_receiver
from tests.polling import wait_for
from tests.stack_support import ARTIFACTS, running_stack

pytestmark = pytest.mark.e2e

SERVER, CLIENT = 2, 3  # OTLP span kinds


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[Stack, OtlpReceiver]]:
    server, receiver, port = start_receiver()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    try:
        with running_stack(
            "test_tracing",
            replicas=1,
            shutdown_grace_s=5,
            env={"inference": env, "backend": env, "edge": env},
            redis=True,
        ) as stack:
            yield stack, receiver
    finally:
        server.stop(0)


def _wait_for_trace(receiver: OtlpReceiver, trace_id: str, services: set[str]) -> list[ReceivedSpan]:
    # Each service's SERVER span ends after its other spans, and a service exports its spans in
    # the order they end: once every SERVER span is in, the trace is. Any span of a service is not
    # enough (the backend's Redis calls or its CLIENT span arrive a batch before its own).
    def complete() -> list[ReceivedSpan]:
        spans = receiver.of_trace(trace_id)
        engine_done = any("engine.first_token" in s.events for s in spans)
        return spans if {s.service for s in spans if s.kind == SERVER} >= services and engine_done else []

    try:
        return wait_for(complete, 15, f"trace {trace_id} complete", every_s=0.1)
    except AssertionError:
        got = [(s.service, s.name) for s in receiver.of_trace(trace_id)]
        raise AssertionError(f"trace {trace_id} incomplete: {got}") from None


def test_one_trace_across_all_three_services(traced: tuple[Stack, OtlpReceiver]) -> None:
    stack, receiver = traced
    body = {
        "model": "sim-fast",
        "stream": True,
        "max_tokens": 8,
        "seed": 2,
        "messages": [{"role": "user", "content": "trace me"}],
    }
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", f"{stack.edge_url}/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            traceparent = resp.headers["traceparent"]
            request_id = resp.headers["x-request-id"]
            assert resp.read().endswith(b"data: [DONE]\n\n")
    version, trace_id, edge_span_id, flags = traceparent.split("-")
    assert version == "00" and len(trace_id) == 32 and int(flags, 16) & 1  # sampled

    spans = _wait_for_trace(
        receiver, trace_id, {"aftershock-edge", "aftershock-backend", "aftershock-inference"}
    )
    by_id = {s.span_id: s for s in spans}

    def one(service: str, name: str, kind: int | None = None) -> ReceivedSpan:
        found = [
            s for s in spans if s.service == service and s.name == name and (kind is None or s.kind == kind)
        ]
        assert len(found) == 1, (service, name, [(s.service, s.name) for s in spans])
        return found[0]

    edge_server = by_id[edge_span_id]
    assert edge_server.service == "aftershock-edge" and edge_server.kind == SERVER
    backend_server = one("aftershock-backend", "aftershock.v1.Backend/Generate", SERVER)
    backend_client = one("aftershock-backend", "aftershock.v1.Inference/Generate", CLIENT)
    inference_server = one("aftershock-inference", "aftershock.v1.Inference/Generate", SERVER)
    # The edge's one call to the backend is covered by its SERVER span (no CLIENT span of its own).
    assert backend_server.parent_id == edge_server.span_id
    assert backend_client.parent_id == backend_server.span_id
    assert inference_server.parent_id == backend_client.span_id
    # The engine's phases: attributes and timestamped events on the inference hop's span, in order
    # and inside it; no span per phase, per token or per SSE chunk (four in all).
    attrs = inference_server.attributes
    queue, ttft, e2e = (attrs[f"gen_ai.latency.{a}"] for a in ("time_in_queue", "time_to_first_token", "e2e"))
    assert 0 <= queue <= ttft <= e2e < 10
    assert attrs["gen_ai.latency.time_in_model_prefill"] == pytest.approx(ttft - queue)
    assert attrs["gen_ai.latency.time_in_model_decode"] == pytest.approx(e2e - ttft)
    ev = inference_server.event_ns
    span = inference_server
    assert span.start_ns <= ev["engine.scheduled"] <= ev["engine.first_token"] <= span.end_ns
    assert len(spans) == 4, [(s.service, s.name) for s in spans]

    # GenAI semantic-convention attributes at the edge and in the engine's hop.
    for span in (edge_server, inference_server):
        attrs = span.attributes
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.request.model"] == "sim-fast"
        assert attrs["gen_ai.usage.output_tokens"] == 8
        assert attrs["gen_ai.usage.input_tokens"] > 0
        assert attrs["gen_ai.response.finish_reasons"] == ("length",)
    assert edge_server.attributes["aftershock.request_id"] == request_id
    assert backend_server.attributes["gen_ai.request.model"] == "sim-fast"
    assert inference_server.attributes["rpc.system"] == "grpc"


def test_a_non_streamed_request_is_one_unary_call_per_hop(traced: tuple[Stack, OtlpReceiver]) -> None:
    stack, receiver = traced
    body = {"model": "sim-fast", "prompt": "unary", "max_tokens": 4, "seed": 3}
    with httpx.Client(timeout=10) as client:
        resp = client.post(f"{stack.edge_url}/v1/completions", json=body)
    assert resp.status_code == 200
    trace_id = resp.headers["traceparent"].split("-")[1]
    spans = _wait_for_trace(
        receiver, trace_id, {"aftershock-edge", "aftershock-backend", "aftershock-inference"}
    )
    names = [(s.service, s.name, s.kind) for s in spans]
    # A span per side of each gRPC hop but the edge's (its SERVER span covers its one call), named
    # for the unary Complete call; no Generate stream anywhere.
    hops = [
        ("aftershock-edge", "POST /v1/completions", SERVER),
        ("aftershock-backend", "aftershock.v1.Backend/Complete", SERVER),
        ("aftershock-backend", "aftershock.v1.Inference/Complete", CLIENT),
        ("aftershock-inference", "aftershock.v1.Inference/Complete", SERVER),
    ]
    for hop in hops:
        assert names.count(hop) == 1, names
    assert not [n for n in names if n[1].endswith("/Generate")], names
    by_name = {(s.service, s.name, s.kind): s for s in spans}
    for child, parent in zip(hops[1:], hops, strict=False):
        assert by_name[child].parent_id == by_name[parent].span_id
    inference = by_name[hops[3]]
    assert inference.attributes["gen_ai.usage.output_tokens"] == 4
    assert inference.attributes["gen_ai.operation.name"] == "text_completion"
    assert inference.events == ["engine.scheduled", "engine.first_token"]
    assert len(spans) == 4, names


def test_a_keyed_request_traces_its_two_redis_calls(traced: tuple[Stack, OtlpReceiver]) -> None:
    stack, receiver = traced
    body = {"model": "sim-fast", "prompt": "keyed", "max_tokens": 4}
    url = f"{stack.edge_url}/v1/completions"
    with httpx.Client(timeout=10) as client:
        # Warm: redis-py loads each script on its first use (a NOSCRIPT reply, SCRIPT LOAD, again).
        assert client.post(url, json=body, headers={"idempotency-key": "tr-warm"}).status_code == 200
        resp = client.post(url, json=body, headers={"idempotency-key": "tr-1"})
    assert resp.status_code == 200
    trace_id = resp.headers["traceparent"].split("-")[1]
    spans = _wait_for_trace(
        receiver, trace_id, {"aftershock-edge", "aftershock-backend", "aftershock-inference"}
    )
    (backend,) = [s for s in spans if s.service == "aftershock-backend" and s.kind == SERVER]
    calls = [s for s in spans if s.attributes.get("db.system") == "redis"]
    # Claim, then finish with the result: a span each, under the backend's span.
    assert len(calls) == 2, [(s.name, s.attributes) for s in calls]
    assert all(s.parent_id == backend.span_id and s.kind == CLIENT for s in calls)
    assert "dedupe" in backend.events


def test_a_keyed_stream_traces_its_claim_and_result_not_each_publish(
    traced: tuple[Stack, OtlpReceiver],
) -> None:
    # 24 tokens 20 ms apart: the owner publishes what it relayed for joiners every 50 ms, about
    # ten batches, in the background. Those are not the request's own work and are not spans.
    stack, receiver = traced
    body = {"model": "sim-slow", "prompt": "keyed stream", "max_tokens": 24, "stream": True}
    url = f"{stack.edge_url}/v1/completions"
    with httpx.Client(timeout=10) as client:
        # Warm: redis-py loads each script on its first use (a NOSCRIPT reply, SCRIPT LOAD, again).
        warm = client.post(url, json=body, headers={"idempotency-key": "tr-stream-warm"})
        assert warm.status_code == 200
        resp = client.post(url, json=body, headers={"idempotency-key": "tr-stream"})
    assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")
    trace_id = resp.headers["traceparent"].split("-")[1]
    _wait_for_trace(receiver, trace_id, {"aftershock-edge", "aftershock-backend", "aftershock-inference"})
    time.sleep(0.3)  # a publish ending after the finish would be exported after it
    spans = receiver.of_trace(trace_id)
    calls = [s for s in spans if s.attributes.get("db.system") == "redis"]
    assert len(calls) == 2, [(s.name, s.attributes.get("db.statement")) for s in calls]
    (backend,) = [s for s in spans if s.service == "aftershock-backend" and s.kind == SERVER]
    assert all(s.parent_id == backend.span_id and s.kind == CLIENT for s in calls)


def test_prompt_text_is_not_recorded(traced: tuple[Stack, OtlpReceiver]) -> None:
    stack, receiver = traced
    secret = "the-secret-prompt-text-42"
    with httpx.Client(timeout=10) as client:
        resp = client.post(
            f"{stack.edge_url}/v1/completions", json={"model": "sim-fast", "prompt": secret, "max_tokens": 3}
        )
    trace_id = resp.headers["traceparent"].split("-")[1]
    spans = _wait_for_trace(receiver, trace_id, {"aftershock-edge", "aftershock-inference"})
    assert all(secret not in repr(s.attributes) for s in spans)
    for log in (ARTIFACTS / "test_tracing").glob("*.log"):
        assert secret not in log.read_text()


def test_latency_histogram_exemplar_carries_the_request_trace_id(traced: tuple[Stack, OtlpReceiver]) -> None:
    stack, _ = traced
    assert stack.edge is not None
    with httpx.Client(timeout=10) as client:
        resp = client.post(
            f"{stack.edge_url}/v1/completions",
            json={"model": "sim-slow", "prompt": "exemplar", "max_tokens": 2},
        )
        assert resp.status_code == 200
        trace_id = resp.headers["traceparent"].split("-")[1]
        text = client.get(
            f"http://127.0.0.1:{stack.edge.metrics_port}/metrics",
            headers={"accept": "application/openmetrics-text; version=1.0.0"},
        ).text
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("aftershock_request_duration_seconds_bucket") and 'model="sim-slow"' in line
    ]
    assert any(f'# {{trace_id="{trace_id}"}}' in line for line in lines), lines


def test_a_stream_handler_error_is_recorded_on_its_server_span(traced: tuple[Stack, OtlpReceiver]) -> None:
    # The replica refuses the stream (prompt plus max_tokens over the model's context) inside its
    # handler, and the backend's handler raises in turn: each server span records the exception,
    # as the unary path's does.
    stack, receiver = traced
    body = {"model": "sim-fast", "prompt": "too long", "max_tokens": 10_000_000, "stream": True}
    with httpx.Client(timeout=10) as client:
        resp = client.post(f"{stack.edge_url}/v1/completions", json=body)
    assert resp.status_code == 400, resp.text
    trace_id = resp.headers["traceparent"].split("-")[1]

    def refused() -> list[ReceivedSpan]:
        spans = [
            s
            for s in receiver.of_trace(trace_id)
            if s.kind == SERVER and s.service in ("aftershock-backend", "aftershock-inference")
        ]
        return spans if len(spans) == 2 else []

    for span in wait_for(refused, 15, f"trace {trace_id}'s server spans", every_s=0.1):
        assert span.attributes["rpc.grpc.status_code"] == 3, span  # INVALID_ARGUMENT
        assert "exception" in span.events, (span.service, span.events)
    (edge,) = wait_for(
        lambda: [s for s in receiver.of_trace(trace_id) if s.service == "aftershock-edge"], 15, "edge span"
    )
    assert edge.attributes["aftershock.grpc_status"] == "INVALID_ARGUMENT", edge.attributes


def test_control_plane_calls_start_no_traces(traced: tuple[Stack, OtlpReceiver]) -> None:
    # The backend polls each replica's load every 0.25 s and lists its models, and the edge's
    # /readyz asks the backend for its models: none of these may start a trace of its own. A call
    # that carries a sampled trace is traced within it.
    stack, receiver = traced
    with httpx.Client(timeout=10) as client:
        for _ in range(3):
            assert client.get(f"{stack.edge_url}/readyz").status_code == 200
    trace_id = secrets.token_hex(16)
    metadata = (("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),)
    with grpc.insecure_channel(stack.backend_target) as channel:
        backend_pb2_grpc.BackendStub(channel).ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=5)
    # The backend exports in the order its spans end: the probes' spans would have come first.
    (listed,) = wait_for(lambda: receiver.of_trace(trace_id), 15, f"trace {trace_id}", every_s=0.1)
    assert listed.name == "aftershock.v1.Backend/ListModels" and listed.kind == SERVER
    time.sleep(0.5)  # two more load polls per replica
    polls = [s for s in receiver.all() if s.name.endswith(("/GetLoad", "/ListModels")) and not s.parent_id]
    assert not polls, [(s.service, s.name) for s in polls[:5]]
