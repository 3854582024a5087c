"""Where a request goes among the replicas that may take it: affinity first, load as the bound.

A request with an affinity key (its prompt prefix, or an opt-in session id) goes to its home on the
hash ring unless that replica carries more than `load_factor` x the mean load; then it spills to
the next replica in the key's ring order that is under the bound. A request without a key goes to
the least loaded replica. Load is what the engines report (running and waiting requests, KV cache
usage) merged with the backend's own in-flight count, which is fresher between reports.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aftershock.backend.hashring import HashRing, load_bound
from aftershock.clock import SYSTEM_CLOCK, Clock

Reason = Literal["prefix", "session", "spill", "least_loaded"]
REASONS: tuple[Reason, ...] = ("prefix", "session", "spill", "least_loaded")


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """The last load an engine reported; all zero until it reports."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0


@dataclass(frozen=True)
class PlacementConfig:
    # "prefix": prefix/session affinity bounded by load; "least_loaded": load alone.
    policy: Literal["prefix", "least_loaded"] = "prefix"
    # Characters per prompt block, and how many leading blocks make the affinity key.
    block_chars: int = 64
    key_blocks: int = 8
    # A replica above load_factor x the mean load is not preferred (bounded loads).
    load_factor: float = 1.25
    # Queued requests wait for a slot, so they weigh on TTFT more than running ones.
    waiting_weight: float = 1.0
    # A nearly full KV cache means preemption: steer away before it happens.
    kv_cache_weight: float = 2.0
    # The bound also holds over time: a replica whose share of recent placements (decaying with this
    # time constant) is above load_factor x the mean share is not preferred either, once at least
    # share_min_per_replica placements per replica are recent (below that, stickiness wins).
    share_window_s: float = 30.0
    share_min_per_replica: float = 10.0


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    in_flight: int
    load: EngineLoad
    # The replica recently lost a hedge race (its first token came later than another's): placed
    # only when every other candidate is busier by more than SLOW_PENALTY.
    slow: bool = False


# Larger than any queue a replica would be given work at: a slow replica is a last resort.
SLOW_PENALTY = 1000.0


def score(c: Candidate, config: PlacementConfig) -> float:
    # The engine's count includes other backends' requests; ours includes requests not yet there.
    busy = max(c.in_flight, c.load.running + c.load.waiting)
    penalty = SLOW_PENALTY if c.slow else 0.0
    return (
        busy
        + config.waiting_weight * c.load.waiting
        + config.kv_cache_weight * c.load.kv_cache_usage
        + penalty
    )


class Placement:
    def __init__(self, config: PlacementConfig, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self._clock = clock
        self._ring = HashRing(())
        self._turn = itertools.count()
        # Recent placements per replica, decayed exponentially: the time-averaged side of the bound.
        self._recent: dict[str, float] = {}
        self._decayed_at = clock.now()

    def _shares(self, names: Sequence[str]) -> dict[str, float]:
        now = self._clock.now()
        factor = math.exp(-(now - self._decayed_at) / self.config.share_window_s)
        self._decayed_at = now
        for name in self._recent:
            self._recent[name] *= factor
        return {n: self._recent.get(n, 0.0) for n in names}

    def _placed(self, name: str, reason: Reason) -> tuple[str, Reason]:
        self._recent[name] = self._recent.get(name, 0.0) + 1.0
        return name, reason

    def _ring_of(self, names: frozenset[str]) -> HashRing:
        # Rebuilt only when the set of candidates changes (a breaker opens, a replica comes back).
        if self._ring.members != names:
            self._ring = HashRing(names)
        return self._ring

    def choose(
        self, candidates: Sequence[Candidate], key: int | None, session: bool = False
    ) -> tuple[str, Reason]:
        if not candidates:
            raise ValueError("no candidates")
        config = self.config
        scores = {c.name: score(c, config) for c in candidates}
        shares = self._shares(list(scores))
        if key is None or config.policy == "least_loaded" or len(candidates) == 1:
            return self._placed(self._least_loaded(scores), "least_loaded")
        bound = load_bound(sum(scores.values()), len(scores), config.load_factor)
        total_share = sum(shares.values())
        share_bound = (
            load_bound(total_share, len(shares), config.load_factor)
            if total_share >= config.share_min_per_replica * len(shares)
            else math.inf
        )
        ring = self._ring_of(frozenset(scores))
        for i, name in enumerate(ring.preference(key)):
            if scores[name] <= bound and shares[name] + 1.0 <= share_bound:
                if i > 0:
                    return self._placed(name, "spill")
                return self._placed(name, "session" if session else "prefix")
        return self._placed(self._least_loaded(scores), "spill")

    def _least_loaded(self, scores: dict[str, float]) -> str:
        low = min(scores.values())
        least = sorted(n for n, s in scores.items() if s == low)
        return least[next(self._turn) % len(least)]
