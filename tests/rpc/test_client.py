"""end_call over a real gRPC hop: a stream whose last message came is left to end by itself; any
other end cancels it, and the server's handler sees the cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from aftershock.rpc.client import end_call
from aftershock.v1 import generation_pb2 as pb
from aftershock.v1 import inference_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="function")


class _LingeringServer(inference_pb2_grpc.InferenceServicer):
    """Sends its last message, then finishes its own work a little later (as a real handler records
    metrics and ends spans after its last yield); says how the handler ended."""

    def __init__(self) -> None:
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def Generate(self, request: pb.GenerateRequest, context: Any) -> AsyncIterator[pb.GenerateResponse]:
        try:
            yield pb.GenerateResponse(tokens=["a"])
            yield pb.GenerateResponse(tokens=["b"], finish_reason=pb.FINISH_REASON_STOP)
            await asyncio.sleep(0.2)
            self.ended.set_result("finished")
        except (asyncio.CancelledError, GeneratorExit):
            # GeneratorExit: the cancel landed while gRPC sent a message this handler yielded, and
            # the handler was closed at that yield (rpc/interceptors.py counts both as CANCELLED).
            self.ended.set_result("cancelled")
            raise


async def _read(complete: bool, code: str) -> str:
    server = grpc.aio.server()
    servicer = _LingeringServer()
    inference_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        call = inference_pb2_grpc.InferenceStub(channel).Generate(pb.GenerateRequest())
        async for msg in call:
            if msg.finish_reason or not complete:
                break
        end_call(call, complete=complete, code=code)
        return await asyncio.wait_for(servicer.ended, 5)
    finally:
        await channel.close()
        await server.stop(None)


async def test_a_stream_whose_last_message_came_ends_by_itself() -> None:
    assert await _read(complete=True, code="OK") == "finished"


@pytest.mark.parametrize(
    ("complete", "code"), [(False, "OK"), (False, "CANCELLED"), (True, "CANCELLED"), (True, "INTERNAL")]
)
async def test_any_other_end_cancels_the_handler(complete: bool, code: str) -> None:
    assert await _read(complete=complete, code=code) == "cancelled"
