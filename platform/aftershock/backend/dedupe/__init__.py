"""Exactly-once generation per idempotency key, on Redis (see dedupe.service for the design)."""

from aftershock.backend.dedupe.config import DedupeConfig, OwnerLost
from aftershock.backend.dedupe.keys import content_key, fingerprint
from aftershock.backend.dedupe.outcomes import Bypass, Claim, Join, Outcome, Replay
from aftershock.backend.dedupe.service import Dedupe, collapse
from aftershock.backend.dedupe.store import Identity

__all__ = [
    "Bypass",
    "Claim",
    "Dedupe",
    "DedupeConfig",
    "Identity",
    "Join",
    "Outcome",
    "OwnerLost",
    "Replay",
    "collapse",
    "content_key",
    "fingerprint",
]
