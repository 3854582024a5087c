"""The vllm engine behind the real gRPC servicer: reproducibility on every message, and vLLM's finish
reasons as the proto's."""

from __future__ import annotations

import pytest
from aftershock.inference.service import InferenceService
from aftershock.inference.settings import InferenceSettings
from aftershock.inference.vllm_engine import VllmEngine
from aftershock.metrics import new_registry
from aftershock.v1 import generation_pb2 as pb

from tests.inference import vllm_fake as v
from tests.inproc import STOP_GRACE_S, generate_request, inference_stub

MODEL = "org/model-7b"


async def serve(fake: v.FakeAsyncLLM, batch_invariant: bool) -> InferenceService:
    engine = VllmEngine({"model": MODEL}, None, api=v.fake_api(fake, [], batch_invariant))
    settings = InferenceSettings(port=0, metrics_port=0, shutdown_grace_s=STOP_GRACE_S)
    service = InferenceService(settings, engine, new_registry())
    await service.start()
    return service


@pytest.mark.parametrize("batch_invariant", [True, False])
async def test_every_message_and_the_model_say_whether_output_is_reproducible(batch_invariant: bool) -> None:
    service = await serve(v.FakeAsyncLLM(), batch_invariant)
    try:
        async with inference_stub(f"127.0.0.1:{service.port}") as stub:
            msgs = [m async for m in stub.Generate(generate_request(MODEL, max_tokens=8))]
            [info] = (await stub.ListModels(pb.ListModelsRequest())).models
        assert len(msgs) == 4 and all(m.reproducible is batch_invariant for m in msgs)
        assert info.reproducible is batch_invariant
    finally:
        await service.stop()


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("stop", pb.FINISH_REASON_STOP),
        ("length", pb.FINISH_REASON_LENGTH),
        ("abort", pb.FINISH_REASON_ABORT),
        ("error", pb.FINISH_REASON_ERROR),
        ("repetition", pb.FINISH_REASON_REPETITION),
    ],
)
async def test_vllm_finish_reasons_reach_the_proto(reason: str, expected: int) -> None:
    service = await serve(v.FakeAsyncLLM(finish_reason=reason), False)
    try:
        async with inference_stub(f"127.0.0.1:{service.port}") as stub:
            msgs = [m async for m in stub.Generate(generate_request(MODEL, max_tokens=8))]
        assert msgs[-1].finish_reason == expected
    finally:
        await service.stop()
