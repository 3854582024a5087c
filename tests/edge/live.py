"""A real edge over a real backend, run in a background event loop so sync tests (hypothesis) can
drive it with a plain httpx.Client over loopback HTTP.

Two backends: the real backend + sim inference (tests/inproc.py), or `ScriptedBackend`, a gRPC
Backend servicer built from the generated stubs that answers what a test scripts (used where the
real backend cannot be made to answer a given thing, e.g. a dedupe replay's original id).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import grpc
from aftershock.inference.sim_config import SimModelConfig
from aftershock.rpc.whole import fold
from aftershock.v1 import backend_pb2_grpc
from aftershock.v1 import generation_pb2 as pb

from tests.inproc import STOP_GRACE_S, EdgeServer, in_process_stack

FUZZ_MODEL = SimModelConfig(name="sim-fuzz", max_output_tokens=16, default_max_tokens=4)


@contextmanager
def in_thread(make: Callable[[], AbstractAsyncContextManager[str]]) -> Iterator[str]:
    """Enters `make()` in a fresh event loop on a daemon thread; yields what it yields (a URL)."""
    ready: Future[str] = Future()
    stop = threading.Event()

    async def main() -> None:
        try:
            async with make() as url:
                ready.set_result(url)
                while not stop.is_set():
                    await asyncio.sleep(0.02)
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    try:
        yield ready.result(timeout=30)
    finally:
        stop.set()
        thread.join(timeout=30)


@asynccontextmanager
async def sim_edge(tmp_path: Path) -> AsyncIterator[str]:
    async with in_process_stack(tmp_path, [FUZZ_MODEL]) as stack:
        yield stack.edge.url


class Abort(Exception):
    """Raised by a script: the RPC ends with this status (after the messages already sent)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class ScriptedBackend(backend_pb2_grpc.BackendServicer):
    """Answers Generate with `script(request)` (an iterable; it may raise Abort) and records every
    request it got."""

    def __init__(self, script: Callable[[pb.GenerateRequest], Iterable[pb.GenerateResponse]]) -> None:
        self.script = script
        self.requests: list[pb.GenerateRequest] = []
        self.models = [pb.ModelInfo(name="sim-x", max_model_len=128, max_output_tokens=64, ready_replicas=1)]

    async def Generate(self, request: pb.GenerateRequest, context: Any) -> AsyncIterator[pb.GenerateResponse]:
        self.requests.append(request)
        try:
            for msg in self.script(request):
                yield msg
        except Abort as abort:
            await context.abort(abort.code, abort.details)

    async def Complete(self, request: pb.GenerateRequest, context: Any) -> pb.GenerateResponse:
        """The unary call the edge makes for a non-streamed request: the script's messages folded."""
        whole = await fold(self.Generate(request, context))
        return whole if whole is not None else pb.GenerateResponse()

    async def ListModels(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=self.models)


@asynccontextmanager
async def scripted_edge(backend: ScriptedBackend, **settings: object) -> AsyncIterator[str]:
    server = grpc.aio.server()
    backend_pb2_grpc.add_BackendServicer_to_server(backend, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    edge = EdgeServer(f"127.0.0.1:{port}", **settings)
    await edge.start()
    try:
        yield edge.url
    finally:
        await edge.stop()
        await server.stop(STOP_GRACE_S)
