"""The prompt prefix a request shares with others, as a routing key.

The backend never tokenizes, so it hashes the prompt's leading characters in fixed-size blocks,
chained the way vLLM chains its KV-cache block hashes (each block's hash covers everything before
it). Two requests with the same system prompt and few-shot examples get the same leading blocks, and
so the same key, whatever their users' last messages say. Only full blocks count: a partial block is
what differs between requests.
"""

from __future__ import annotations

import hashlib

from aftershock.v1 import generation_pb2 as pb

# Separators that cannot appear in a role name, so "ab" + "c" never renders like "a" + "bc".
_ROLE_END = "\x1f"
_TURN_END = "\x1e"


def rendered_prompt(request: pb.GenerateRequest) -> str:
    if request.WhichOneof("input") == "chat":
        return "".join(f"{m.role}{_ROLE_END}{m.content}{_TURN_END}" for m in request.chat.messages)
    return request.prompt


def block_hashes(text: str, block_chars: int, max_blocks: int) -> list[int]:
    """Chained hashes of the first `max_blocks` full blocks of `text`."""
    hashes: list[int] = []
    parent = b""
    data = text.encode()
    for i in range(min(max_blocks, len(data) // block_chars)):
        digest = hashlib.blake2b(parent + data[i * block_chars : (i + 1) * block_chars], digest_size=8)
        parent = digest.digest()
        hashes.append(int.from_bytes(parent, "big"))
    return hashes


def prefix_key(request: pb.GenerateRequest, block_chars: int, key_blocks: int) -> int | None:
    """The hash of the deepest full block within the first `key_blocks`; None for a short prompt.

    A short prompt has no prefix worth keeping a replica for, so it is placed by load alone.
    """
    hashes = block_hashes(rendered_prompt(request), block_chars, key_blocks)
    return hashes[-1] if hashes else None
