"""A non-streamed answer as one message: the messages of a Generate stream folded together.

The unary Complete rpc answers with one GenerateResponse; where the source is a stream of several
(a dedupe join, a test's scripted backend) they fold into one: the first message's identity
(completion_id, created, model), every token in order, and the last message's totals and finish.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aftershock.v1 import generation_pb2 as pb


async def fold(messages: AsyncIterator[pb.GenerateResponse]) -> pb.GenerateResponse | None:
    """None when the stream carried no message at all."""
    whole: pb.GenerateResponse | None = None
    async for msg in messages:
        if whole is None:
            whole = msg
            continue
        whole.tokens.extend(msg.tokens)
        whole.prompt_tokens = msg.prompt_tokens or whole.prompt_tokens
        whole.completion_tokens = msg.completion_tokens
        whole.finish_reason = msg.finish_reason
        whole.timing.CopyFrom(msg.timing)
        whole.replica = msg.replica
        whole.attempts = msg.attempts
        whole.reproducible = msg.reproducible
    return whole
