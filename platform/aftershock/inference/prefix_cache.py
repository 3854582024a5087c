"""A per-replica prefix cache shaped like vLLM's automatic prefix caching.

The prompt is cut into fixed-size token blocks; each full block is named by a hash that covers its
parent's hash and its own tokens, so a block hash stands for the whole prefix up to it. A partial last
block is never cached. Blocks referenced by a running request cannot be evicted; once released they
stay cached and become evictable, least recently used first. Capacity counts every block a running
request holds (cached prompt blocks plus its private partial and decode blocks), as a KV cache would.

As in vLLM, the last prompt token is always computed (its logits are needed), so a prompt can hit at
most `len - 1` tokens, and queries and hits are counted in tokens.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

BlockHash = bytes


def block_hashes(tokens: Sequence[str], block_size: int) -> list[BlockHash]:
    """The chained hashes of every full block of `tokens`; a trailing partial block gets none.

    A stable digest (not Python's salted hash) so another process, a router for instance, can
    compute the same names for the same prompt.
    """
    hashes: list[BlockHash] = []
    parent = b""
    for start in range(0, len(tokens) - block_size + 1, block_size):
        h = hashlib.blake2b(parent, digest_size=16)
        for token in tokens[start : start + block_size]:
            h.update(b"\x00")
            h.update(token.encode())
        parent = h.digest()
        hashes.append(parent)
    return hashes


@dataclass(slots=True)
class Allocation:
    """The blocks one request holds: shared cached blocks by hash, and a count of private blocks."""

    cached: list[BlockHash] = field(default_factory=list)
    private_blocks: int = 0
    hit_tokens: int = 0
    released: bool = False


class PrefixCache:
    """Block bookkeeping for one model on one replica."""

    def __init__(self, block_size: int, capacity_blocks: int) -> None:
        if block_size <= 0 or capacity_blocks <= 0:
            raise ValueError("block_size and capacity_blocks must be positive")
        self.block_size = block_size
        self.capacity = capacity_blocks
        self._refs: dict[BlockHash, int] = {}  # every cached block and how many requests hold it
        self._evictable: OrderedDict[BlockHash, None] = OrderedDict()  # refs == 0, LRU first
        self._private = 0  # blocks held by requests outside the cache (partial and decode blocks)
        self.queries_tokens = 0
        self.hit_tokens = 0
        self.evicted_blocks = 0

    @property
    def cached_blocks(self) -> int:
        return len(self._refs)

    @property
    def used_blocks(self) -> int:
        """Blocks held by running requests; cached blocks nobody holds count as free, as in vLLM."""
        return len(self._refs) - len(self._evictable) + self._private

    @property
    def usage(self) -> float:
        return min(1.0, self.used_blocks / self.capacity)

    def contains(self, block: BlockHash) -> bool:
        return block in self._refs

    def acquire(self, tokens: Sequence[str]) -> Allocation:
        """Reserve blocks for a prompt being scheduled; returns how many of its tokens were cached."""
        alloc = Allocation()
        hashes = block_hashes(tokens, self.block_size)
        # The last prompt token is always recomputed, so a block ending on it cannot count as a hit.
        hittable = (len(tokens) - 1) // self.block_size
        hitting = True
        for i, h in enumerate(hashes):
            refs = self._refs.get(h)
            if refs is not None:
                if refs == 0:
                    del self._evictable[h]
                self._refs[h] = refs + 1
                alloc.cached.append(h)
                if hitting and i < hittable:
                    alloc.hit_tokens += self.block_size
                    continue
            elif self._make_room():
                self._refs[h] = 1
                alloc.cached.append(h)
            else:
                alloc.private_blocks += 1  # no room to keep it cached: computed and dropped later
                self._private += 1
            hitting = False
        partial = len(tokens) - len(hashes) * self.block_size
        if partial:
            self._take_private(alloc, 1)
        self.queries_tokens += len(tokens)
        self.hit_tokens += alloc.hit_tokens
        return alloc

    def hold(self, n_tokens: int) -> Allocation:
        """Blocks for a request that neither looks up nor shares its prefix (caching turned off)."""
        alloc = Allocation()
        self._take_private(alloc, -(-n_tokens // self.block_size))
        return alloc

    def grow(self, alloc: Allocation, total_tokens: int) -> None:
        """Account for decode: the request now holds `total_tokens` tokens of KV."""
        needed = -(-total_tokens // self.block_size) - len(alloc.cached) - alloc.private_blocks
        if needed > 0 and not alloc.released:
            self._take_private(alloc, needed)

    def release(self, alloc: Allocation) -> None:
        """The request finished or was aborted: its blocks stay cached but become evictable."""
        if alloc.released:
            return
        alloc.released = True
        self._private -= alloc.private_blocks
        # The chain's tail goes to the LRU end first, so a prefix's deepest blocks are evicted
        # before its shared head, as vLLM's free queue does.
        for h in reversed(alloc.cached):
            refs = self._refs[h] - 1
            self._refs[h] = refs
            if refs == 0:
                self._evictable[h] = None

    def _take_private(self, alloc: Allocation, n: int) -> None:
        # Private blocks evict cached ones when needed but are never refused: the simulator does not
        # model preemption, so a full cache over-commits and usage reads 1.0.
        for _ in range(n):
            self._make_room()
        alloc.private_blocks += n
        self._private += n

    def _make_room(self) -> bool:
        """True once one more block fits, evicting the least recently used free block if needed."""
        if len(self._refs) + self._private < self.capacity:
            return True
        if not self._evictable:
            return False
        victim, _ = self._evictable.popitem(last=False)
        del self._refs[victim]
        self.evicted_blocks += 1
        return True
