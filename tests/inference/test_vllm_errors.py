"""vLLM's exceptions and finish reasons through VllmEngine: each gets its gRPC code (and the edge's
HTTP status), a dead engine is noticed, every finish reason is mapped. Over vllm_fake's double (vLLM's
real exception classes in the contract lane)."""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import grpc
import pytest
from aftershock import errors
from aftershock.edge.errors import HTTP_STATUS
from aftershock.inference.engine import EngineOutput
from aftershock.inference.vllm_engine import FINISH_REASONS

from tests.inference import vllm_fake as v
from tests.inference.test_vllm_engine import drain, request
from tests.inference.vllm_fake import FakeAsyncLLM
from tests.inference.vllm_fake import started_engine as started

# Each of vLLM's exception classes, the gRPC code it becomes and the HTTP status the edge answers.
ERROR_CASES = [
    (
        v.VLLMValidationError("temperature must be non-negative", parameter="temperature"),
        grpc.StatusCode.INVALID_ARGUMENT,
        400,
    ),
    (v.VLLMNotFoundError("no such LoRA adapter"), grpc.StatusCode.INVALID_ARGUMENT, 400),
    (v.VLLMClientError("bad request"), grpc.StatusCode.INVALID_ARGUMENT, 400),
    (v.QueueOverflowError(), grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (v.GracefulHTTPError("conflict", HTTPStatus.CONFLICT), grpc.StatusCode.INVALID_ARGUMENT, 400),
    (v.RetryableRequestError(), grpc.StatusCode.UNAVAILABLE, 503),
    (v.EngineGenerateError(), grpc.StatusCode.UNAVAILABLE, 503),
    (v.GenerationError(), grpc.StatusCode.INTERNAL, 500),
    (v.EngineDeadError(), grpc.StatusCode.UNAVAILABLE, 503),
]


@pytest.mark.parametrize(
    ("failure", "code", "http"), ERROR_CASES, ids=[type(c[0]).__name__ for c in ERROR_CASES]
)
async def test_each_vllm_exception_gets_its_status(
    failure: BaseException, code: grpc.StatusCode, http: int
) -> None:
    fake = FakeAsyncLLM(fail_at=1, failure=failure)
    engine, _ = await started(fake)
    got: list[EngineOutput] = []
    with pytest.raises(errors.AftershockError) as info:
        async for out in engine.generate(request()):
            got.append(out)
    # The edge's own mapping (codes it does not list answer 500).
    assert (info.value.code, HTTP_STATUS.get(info.value.code, 500)) == (code, http)
    assert len(got) == 1
    dead = isinstance(failure, v.EngineDeadError)
    assert engine.dead.is_set() is dead
    # A dead engine is not asked to abort (it has shut down); any other failure aborts our request.
    assert fake.aborted == ([] if dead else [fake.calls[0].request_id])
    if dead:
        assert "EngineCore" not in info.value.message  # internals stay in the log
        with pytest.raises(errors.Unavailable):
            engine.generate(request())


async def test_an_idle_engine_that_dies_is_noticed() -> None:
    fake = FakeAsyncLLM()
    engine, _ = await started(fake)
    fake.dead = True
    await asyncio.wait_for(engine.dead.wait(), 2.0)


async def test_invalid_sampling_params_are_invalid_argument() -> None:
    fake = FakeAsyncLLM()
    engine, _ = await started(fake)
    with pytest.raises(errors.InvalidArgument) as info:
        engine.generate(request(temperature=-1.0))
    assert "temperature" in info.value.message
    assert fake.calls == []


@pytest.mark.parametrize("reason", sorted(k for k in FINISH_REASONS if k))
async def test_every_vllm_finish_reason_is_mapped(reason: str) -> None:
    fake = FakeAsyncLLM(finish_reason=reason)
    engine, _ = await started(fake)
    outs = await drain(engine.generate(request()))
    assert outs[-1].finish_reason == reason
