"""OpenAI-compatible request bodies, validated strictly (a string is not a number)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Fields OpenAI defines that we accept and ignore are allowed through `extra="ignore"`; the SDK sends
# new ones over time and a client should not break on them.
# NaN and Infinity literals (which the JSON parser accepts) are refused as "not a finite number".
_CONFIG = ConfigDict(strict=True, extra="ignore", frozen=True, allow_inf_nan=False)
# Token counts travel as uint32 (SamplingParams.max_tokens): any larger number is a 400 here, not a
# protobuf ValueError (500) later.
MAX_TOKENS_LIMIT = 2**32 - 1


class TextPart(BaseModel):
    model_config = _CONFIG

    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = _CONFIG

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = _CONFIG

    include_usage: bool = False


class _SamplingFields(BaseModel):
    model_config = _CONFIG

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, gt=0, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=1, description="only one choice per request is supported")
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_limits(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if isinstance(v, list) and any(not s for s in v):
            raise ValueError("stop sequences must not be empty")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, gt=0, le=MAX_TOKENS_LIMIT)

    def effective_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] = Field(min_length=1)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("exactly one prompt per request is supported")
        return v

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def effective_max_tokens(self) -> int | None:
        return self.max_tokens
