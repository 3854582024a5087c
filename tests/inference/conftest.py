"""The inference component tests' shared replica: one in-process sim service with these models,
and a stub to it over real gRPC (test_servicer.py, test_complete.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aftershock.inference.sim_config import SimModelConfig
from aftershock.v1 import inference_pb2_grpc

from tests.inproc import RunningInference, inference_stub, start_inference

MODELS = (
    SimModelConfig(name="fast"),
    SimModelConfig(name="paced", itl_s=0.04),
    SimModelConfig(name="slow", itl_s=0.05),
    SimModelConfig(name="tight", max_model_len=64, max_output_tokens=16),
    SimModelConfig(name="busy", fault_overloaded_rate=1.0),
    SimModelConfig(name="broken", fault_error_rate=1.0),
)
PROMPT = "tell me a story"


@pytest.fixture
async def replica() -> AsyncIterator[RunningInference]:
    running = await start_inference(MODELS)
    yield running
    await running.service.stop()


@pytest.fixture
async def stub(replica: RunningInference) -> AsyncIterator[inference_pb2_grpc.InferenceStub]:
    async with inference_stub(replica.address) as s:
        yield s
