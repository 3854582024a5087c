"""The two completion endpoints: what each accepts, how it becomes a backend request, what it answers.

Everything else about serving them is shared (completions.py); this is the whole difference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from aftershock.edge.responses import CHAT, TEXT, ResponseShape
from aftershock.edge.schema import ChatCompletionRequest, CompletionRequest
from aftershock.v1 import generation_pb2 as pb

R = TypeVar("R", ChatCompletionRequest, CompletionRequest)


@dataclass(frozen=True)
class Endpoint(Generic[R]):
    path: str
    schema: type[R]
    shape: ResponseShape
    # Fills the request's input (chat messages or prompt) into the backend request.
    set_input: Callable[[R, pb.GenerateRequest], None]

    def to_grpc(self, parsed: R, request_id: str, completion_id: str, created: int) -> pb.GenerateRequest:
        sampling = pb.SamplingParams(max_tokens=parsed.effective_max_tokens() or 0, stop=parsed.stop_list())
        if parsed.seed is not None:
            sampling.seed = parsed.seed
        if parsed.temperature is not None:
            sampling.temperature = parsed.temperature
        if parsed.top_p is not None:
            sampling.top_p = parsed.top_p
        req = pb.GenerateRequest(
            request_id=request_id,
            model=parsed.model,
            sampling=sampling,
            stream=parsed.stream,
            completion_id=completion_id,
            created=created,
        )
        self.set_input(parsed, req)
        return req


def _chat_input(parsed: ChatCompletionRequest, req: pb.GenerateRequest) -> None:
    req.chat.messages.extend(
        pb.ChatMessage(role=m.role, content=m.text(), name=m.name or "") for m in parsed.messages
    )


def _prompt_input(parsed: CompletionRequest, req: pb.GenerateRequest) -> None:
    req.prompt = parsed.prompt_text()


CHAT_COMPLETIONS = Endpoint("/v1/chat/completions", ChatCompletionRequest, CHAT, _chat_input)
COMPLETIONS = Endpoint("/v1/completions", CompletionRequest, TEXT, _prompt_input)
