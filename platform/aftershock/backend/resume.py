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


class ResumeCursor:
    """Counts the characters handed to the caller; after `restart()` (a new source that starts
    from the beginning) `admit` drops the first that many characters again."""

    def __init__(self) -> None:
        self.delivered = 0
        # Every message delivered so far was declared reproducible by the replica that made it.
        self.reproducible = True
        self._skip = 0

    def may_resume(self, request: pb.GenerateRequest) -> bool:
        """May a new source take over now? Always before any text; after it, only when the request
        is deterministic and what was delivered is reproducible (another replica makes the same)."""
        return not self.delivered or (self.reproducible and is_deterministic(request))

    def restart(self) -> None:
        self._skip = self.delivered

    def admit(self, msg: pb.GenerateResponse) -> pb.GenerateResponse | None:
        """The part of `msg` the caller does not have yet (None when nothing is left and it is not
        the last message); what is returned counts as delivered."""
        if self._skip:
            pieces = list(msg.tokens)
            kept: list[str] = []
            skip = self._skip
            for i, piece in enumerate(pieces):
                if skip >= len(piece):
                    skip -= len(piece)
                    continue
                kept = [piece[skip:], *pieces[i + 1 :]]
                skip = 0
                break
            self._skip = skip
            if not kept and not msg.finish_reason:
                return None
            del msg.tokens[:]
            msg.tokens.extend(kept)
        self.delivered += sum(len(t) for t in msg.tokens)
        self.reproducible = self.reproducible and msg.reproducible
        return msg
