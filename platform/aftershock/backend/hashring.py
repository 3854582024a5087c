"""Consistent hashing with bounded loads: a stable home replica for a key, spilling when it is busy.

Each replica owns many points on a ring (virtual nodes) so keys spread evenly and a replica that
comes or goes moves only its own share of keys. Walking clockwise from a key's point gives every
replica once, in that key's order of preference; the caller takes the first one whose load is under
the bound (Mirrokni, Thorup and Zadimoghaddam's "consistent hashing with bounded loads"), so one hot
key cannot overload its home while the others stay idle.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator

VIRTUAL_NODES = 64


def point(data: bytes) -> int:
    """A 64-bit position on the ring; stable across processes (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, members: Iterable[str], virtual_nodes: int = VIRTUAL_NODES) -> None:
        self.members = frozenset(members)
        ring = sorted(
            (point(f"{name}#{i}".encode()), name) for name in self.members for i in range(virtual_nodes)
        )
        self._points = [p for p, _ in ring]
        self._names = [n for _, n in ring]

    def preference(self, key: int) -> Iterator[str]:
        """Every member once, in the order a key prefers them."""
        if not self._points:
            return
        start = bisect.bisect_left(self._points, key)
        seen: set[str] = set()
        n = len(self._points)
        for i in range(n):
            name = self._names[(start + i) % n]
            if name not in seen:
                seen.add(name)
                yield name
                if len(seen) == len(self.members):
                    return


def load_bound(total_load: float, members: int, factor: float) -> float:
    """The most load one member may carry: factor x the mean, counting the request being placed."""
    return factor * (total_load + 1.0) / max(1, members)
