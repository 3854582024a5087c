"""Domain errors survive a real gRPC hop: code, message, type, param and retry-after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from aftershock import errors
from aftershock.backend.service import BackendService
from aftershock.inference.sim_config import SimModelConfig
from aftershock.ports import free_port
from aftershock.rpc.status import RETRYABLE_CODES, error_from_rpc, metadata_value
from aftershock.v1 import backend_pb2_grpc, inference_pb2_grpc
from aftershock.v1 import generation_pb2 as pb

from tests.inproc import RunningInference, generate_request, start_backend, start_inference, write_registry

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODELS = (
    SimModelConfig(name="m", max_output_tokens=10),
    SimModelConfig(name="slow", itl_s=0.05),
    SimModelConfig(name="busy", fault_overloaded_rate=1.0),
    SimModelConfig(name="broken", fault_error_rate=1.0),
)


@dataclass
class Hops:
    inference: RunningInference
    backend: BackendService
    channel: grpc.aio.Channel
    backend_channel: grpc.aio.Channel

    async def inference_error(
        self, request: pb.GenerateRequest, deadline_s: float | None = None
    ) -> grpc.aio.AioRpcError:
        stub = inference_pb2_grpc.InferenceStub(self.channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Generate(request, timeout=deadline_s):
                pass
        return info.value

    async def backend_error(self, request: pb.GenerateRequest) -> grpc.aio.AioRpcError:
        stub = backend_pb2_grpc.BackendStub(self.backend_channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Generate(request):
                pass
        return info.value


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hops(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hops]:
    inference = await start_inference(MODELS)
    registry = write_registry(
        Path(tmp_path_factory.mktemp("status")) / "registry.yaml",
        {"inference-0": inference.address, "dead": f"127.0.0.1:{free_port()}"},
        {"m": ["inference-0"], "nowhere": ["dead"]},
    )
    backend = await start_backend(registry, wait_for=["inference-0"])
    channel = grpc.aio.insecure_channel(inference.address)
    backend_channel = grpc.aio.insecure_channel(f"127.0.0.1:{backend.port}")
    yield Hops(inference, backend, channel, backend_channel)
    await channel.close()
    await backend_channel.close()
    await backend.stop()
    await inference.service.stop()


async def test_not_found_keeps_type_and_param(hops: Hops) -> None:
    err = error_from_rpc(await hops.inference_error(generate_request("gpt-nope")))
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert err.message == "The model 'gpt-nope' does not exist or you do not have access to it."
    assert (err.error_type, err.param, err.retry_after_s) == ("model_not_found", "model", None)


async def test_invalid_argument_keeps_param(hops: Hops) -> None:
    err = error_from_rpc(await hops.inference_error(generate_request("m", max_tokens=11)))
    assert isinstance(err, errors.InvalidArgument)
    assert err.message == "max_tokens is 11, above this model's limit of 10."
    assert (err.error_type, err.param) == ("invalid_request_error", "max_tokens")


async def test_resource_exhausted_keeps_retry_after(hops: Hops) -> None:
    err = error_from_rpc(await hops.inference_error(generate_request("busy")))
    assert isinstance(err, errors.ResourceExhausted)
    assert err.message == "Engine overloaded (injected fault)."
    assert (err.error_type, err.retry_after_s) == ("engine_overloaded", 1.0)


async def test_internal(hops: Hops) -> None:
    err = error_from_rpc(await hops.inference_error(generate_request("broken")))
    assert isinstance(err, errors.Internal)
    assert err.message == "Engine failed (injected fault)."
    assert err.error_type == "internal_error" and err.param is None


async def test_deadline_exceeded_without_metadata(hops: Hops) -> None:
    err = error_from_rpc(await hops.inference_error(generate_request("slow", max_tokens=100), deadline_s=0.1))
    assert isinstance(err, errors.DeadlineExceeded)
    assert err.error_type == "timeout"  # the class default: a client-side deadline carries no metadata
    assert err.message


async def test_unavailable_across_two_hops(hops: Hops) -> None:
    err = error_from_rpc(await hops.backend_error(generate_request("nowhere")))
    assert isinstance(err, errors.Unavailable)
    assert (err.error_type, err.retry_after_s) == ("no_healthy_replica", 1.0)
    assert "nowhere" in err.message


async def test_error_relayed_by_the_backend_is_unchanged(hops: Hops) -> None:
    direct = error_from_rpc(await hops.inference_error(generate_request("m", max_tokens=11)))
    relayed = error_from_rpc(await hops.backend_error(generate_request("m", max_tokens=11)))
    assert (relayed.code, relayed.message, relayed.error_type, relayed.param, relayed.retry_after_s) == (
        direct.code,
        direct.message,
        direct.error_type,
        direct.param,
        direct.retry_after_s,
    )


async def test_code_without_a_class_is_kept(hops: Hops) -> None:
    # The inference port has no Backend service: gRPC itself answers UNIMPLEMENTED.
    stub = backend_pb2_grpc.BackendStub(hops.channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListModels(pb.ListModelsRequest())
    err = error_from_rpc(info.value)
    assert err.code == grpc.StatusCode.UNIMPLEMENTED
    assert err.message


def rpc_error(code: grpc.StatusCode, *md: tuple[str, str]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*md), "details")


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
        (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists),
        (grpc.StatusCode.CANCELLED, errors.Cancelled),
    ],
)
async def test_every_code_has_its_class(code: grpc.StatusCode, cls: type[errors.AftershockError]) -> None:
    err = error_from_rpc(rpc_error(code))
    assert type(err) is cls and err.code == code and err.error_type == cls.error_type


async def test_malformed_retry_after_is_ignored() -> None:
    err = error_from_rpc(rpc_error(grpc.StatusCode.UNAVAILABLE, ("aftershock-retry-after-ms", "soon")))
    assert err.retry_after_s is None
    err = error_from_rpc(rpc_error(grpc.StatusCode.UNAVAILABLE, ("aftershock-retry-after-ms", "1500")))
    assert err.retry_after_s == 1.5


async def test_metadata_value() -> None:
    md = grpc.aio.Metadata(("a", "1"), ("b-bin", b"\x01"))
    assert metadata_value(md, "a") == "1"
    assert metadata_value(md, "missing") is None
    assert metadata_value(None, "a") is None
    assert metadata_value((("k", b"bytes"),), "k") == "bytes"


async def test_retryable_codes() -> None:
    assert {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    } == RETRYABLE_CODES
