"""Between the gRPC contract and the engine's plain dataclasses."""

from __future__ import annotations

from aftershock.inference.engine import ChatTurn, EngineOutput, EngineRequest, ModelSpec
from aftershock.v1 import generation_pb2 as pb

FINISH_TO_PB = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "abort": pb.FINISH_REASON_ABORT,
    # The backend retries ERROR like UNAVAILABLE; REPETITION ends the completion as it is.
    "error": pb.FINISH_REASON_ERROR,
    "repetition": pb.FINISH_REASON_REPETITION,
}


def engine_request(req: pb.GenerateRequest, deadline: float | None, *, stream: bool = True) -> EngineRequest:
    s = req.sampling
    messages: tuple[ChatTurn, ...] | None = None
    prompt: str | None = None
    if req.WhichOneof("input") == "chat":
        messages = tuple(ChatTurn(m.role, m.content) for m in req.chat.messages)
    else:
        prompt = req.prompt
    return EngineRequest(
        request_id=req.request_id,
        model=req.model,
        max_tokens=s.max_tokens,
        prompt=prompt,
        messages=messages,
        temperature=s.temperature if s.HasField("temperature") else None,
        top_p=s.top_p if s.HasField("top_p") else None,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
        deadline=deadline,
        stream=stream and req.stream,
    )


def response(
    out: EngineOutput, tokens: list[str] | None = None, *, reproducible: bool = False
) -> pb.GenerateResponse:
    msg = pb.GenerateResponse(
        tokens=out.tokens if tokens is None else tokens,
        prompt_tokens=out.prompt_tokens,
        completion_tokens=out.completion_tokens,
        reproducible=reproducible,
    )
    if out.finish_reason is not None:
        msg.finish_reason = FINISH_TO_PB[out.finish_reason]
        msg.timing.queue_seconds = out.queue_s
        msg.timing.ttft_seconds = out.ttft_s
        msg.timing.e2e_seconds = out.e2e_s
    return msg


def model_info(spec: ModelSpec, reproducible: bool = False) -> pb.ModelInfo:
    return pb.ModelInfo(
        reproducible=reproducible,
        name=spec.name,
        max_model_len=spec.max_model_len,
        max_output_tokens=spec.max_output_tokens,
        engine=spec.engine,
        ready_replicas=1,
        total_replicas=1,
    )
