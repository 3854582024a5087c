"""The status interceptor's stream wrapper over a real gRPC hop: a stream its client abandons
mid-way ends without an error in the log and is counted as cancelled, whichever task finally
closes the handler."""

from __future__ import annotations

import asyncio
import gc
import logging

import grpc
import pytest
from aftershock.inference.sim_config import SimModelConfig
from aftershock.v1 import inference_pb2_grpc

from tests.inproc import generate_request, start_inference

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_streams_cancelled_mid_way_log_no_context_errors(caplog: pytest.LogCaptureFixture) -> None:
    # Cancels land while the handler waits to send (its generator suspended at a yield): the
    # generator is then closed later by the event loop's finalizer, in another context. A span
    # context held across that yield could not be detached there ("Failed to detach context").
    model = SimModelConfig(name="fast", max_model_len=100_000, max_output_tokens=100_000)
    inference = await start_inference([model])
    channel = grpc.aio.insecure_channel(inference.address)
    stub = inference_pb2_grpc.InferenceStub(channel)
    caplog.set_level(logging.ERROR)
    try:
        for i in range(40):
            call = stub.Generate(generate_request("fast", max_tokens=50_000, request_id=f"r{i}"))
            async for _ in call:
                break
            await asyncio.sleep(0.01 * (i % 5))
            call.cancel()
        await asyncio.sleep(0.3)
        gc.collect()
        await asyncio.sleep(0.3)
        registry = inference.registry
        # Every abandoned stream was closed: nothing in flight, every generation aborted.
        assert registry.get_sample_value("aftershock_in_flight_requests", {"service": "inference"}) == 0
        aborted = registry.get_sample_value(
            "vllm:request_success_total", {"model_name": "fast", "finished_reason": "abort"}
        )
        assert aborted == 40
        # And every one is counted as cancelled, however its handler ended: a CancelledError where
        # it awaited, or GeneratorExit at a yield when the finalizer closed it.
        codes = {
            code: registry.get_sample_value(
                "aftershock_requests_total", {"service": "inference", "model": "fast", "code": code}
            )
            for code in ("OK", "CANCELLED")
        }
        assert codes == {"OK": None, "CANCELLED": 40}, codes
    finally:
        await channel.close()
        await inference.service.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, f"{len(errors)} errors, first: {errors[0].getMessage()}"
