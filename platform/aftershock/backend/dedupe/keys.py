"""What identifies a request for dedupe: its key and the fingerprint of its body."""

from __future__ import annotations

import hashlib

from aftershock.v1 import generation_pb2 as pb


def fingerprint(request: pb.GenerateRequest) -> str:
    """A hash of what determines the output: model, input and sampling.

    Excludes the request id, the stream flag and stream_interval (they change how the same tokens
    are framed, not which), the idempotency key, and the response id and created time the edge
    chose (every duplicate has its own; dedupe answers with the first one's). Built from the
    message minus those fields, so a field added to the contract later is covered without
    touching this.
    """
    content = pb.GenerateRequest()
    content.CopyFrom(request)
    content.ClearField("request_id")
    content.ClearField("stream")
    content.ClearField("stream_interval")
    content.ClearField("idempotency_key")
    content.ClearField("completion_id")
    content.ClearField("created")
    # Which replica a session prefers says nothing about the output.
    content.ClearField("session_id")
    return hashlib.sha256(b"aftershock.fp.v1\0" + content.SerializeToString(deterministic=True)).hexdigest()


def content_key(request: pb.GenerateRequest) -> str:
    """A dedupe key for a deterministic request without an Idempotency-Key (when so configured)."""
    return "content:" + fingerprint(request)


# --- Lua ---------------------------------------------------------------------------------------

# Last sequence number written to a stream (entry IDs are 0-<seq>); 0 when empty.
