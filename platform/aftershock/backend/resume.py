"""Resuming a deterministic stream elsewhere: skip exactly the text the caller already has.

A deterministic (seeded or greedy) request regenerates the same text on any replica, though not
necessarily cut into the same pieces, so characters (not messages or pieces) are the unit that
lines up. Used by the relay (failover to another replica) and by dedupe (a joiner whose owner died).
"""

from __future__ import annotations

from aftershock.v1 import generation_pb2 as pb


def is_deterministic(request: pb.GenerateRequest) -> bool:
    s = request.sampling
    return s.HasField("seed") or (s.HasField("temperature") and s.temperature == 0.0)


def text_length(msg: pb.GenerateResponse) -> int:
    return sum(len(t) for t in msg.tokens)


def skip_delivered(msg: pb.GenerateResponse, skip: int) -> tuple[pb.GenerateResponse | None, int]:
    """Drop the first `skip` characters of a resumed stream's text.

    Returns the message left to send (None when nothing is left and it is not the last) and what is
    left to skip.
    """
    pieces = list(msg.tokens)
    kept: list[str] = []
    for i, piece in enumerate(pieces):
        if skip >= len(piece):
            skip -= len(piece)
            continue
        kept = [piece[skip:], *pieces[i + 1 :]]
        skip = 0
        break
    if not kept and not msg.finish_reason:
        return None, skip
    del msg.tokens[:]
    msg.tokens.extend(kept)
    return msg, skip
