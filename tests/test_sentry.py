"""Sentry: off without SENTRY_DSN; with it, an unhandled error in a service reaches Sentry (a real
sentry-sdk posting to a local HTTP endpoint) tagged with its trace id and request id."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
import sentry_sdk
from aftershock import sentry, tracing
from aftershock.inference.engine import EngineOutput, EngineRequest, ModelSpec
from aftershock.inference.service import InferenceService
from aftershock.inference.settings import InferenceSettings
from aftershock.metrics import new_registry
from aftershock.v1 import generation_pb2 as pb
from aftershock.v1 import inference_pb2_grpc


class _Inbox(BaseHTTPRequestHandler):
    envelopes: list[bytes] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        encoding = self.headers.get("content-encoding")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "br":  # sentry-sdk compresses with brotli when it is installed
            import brotli

            body = brotli.decompress(body)
        type(self).envelopes.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def inbox() -> Iterator[tuple[str, list[bytes]]]:
    _Inbox.envelopes = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Inbox)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://public@127.0.0.1:{server.server_address[1]}/1", _Inbox.envelopes
    finally:
        server.shutdown()
        sentry_sdk.init()  # back to a disabled client for the rest of the session


class BrokenEngine:
    """An engine with a bug: the servicer's unexpected-error path is what is under test."""

    kind = "broken"
    reproducible = False

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def models(self) -> Sequence[ModelSpec]:
        return [ModelSpec("m", 128, 64, self.kind)]

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        raise RuntimeError("engine bug")


def test_off_without_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENTRY_DSN", raising=False)
    assert sentry.configure("edge") is False


async def test_unhandled_error_reaches_sentry_with_trace_and_request_ids(
    inbox: tuple[str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn, envelopes = inbox
    monkeypatch.setenv("SENTRY_DSN", dsn)
    tracing.configure_tracing("inference")
    assert sentry.configure("inference") is True
    settings = InferenceSettings(port=0, metrics_port=0)
    service = InferenceService(settings, BrokenEngine(), new_registry())
    await service.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            request = pb.GenerateRequest(request_id="req-sentry-1", model="m", prompt="x")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.Generate(request, timeout=5):
                    pass
            assert info.value.code() == grpc.StatusCode.INTERNAL  # and no stack trace leaks to the client
            assert "engine bug" not in (info.value.details() or "")
    finally:
        await service.stop(0)
    sentry_sdk.flush(5)
    events = [
        json.loads(line)
        for env in envelopes
        for line in env.splitlines()[1:]
        if b'"exception"' in line or b'"logentry"' in line
    ]
    assert events, envelopes
    tags = events[0]["tags"]
    assert tags["request_id"] == "req-sentry-1"
    assert len(tags["trace_id"]) == 32
    assert tags["service"] == "inference"
