"""The simulator's prefix cache: hash chain, full blocks only, LRU eviction, capacity, hit counting."""

from __future__ import annotations

import pytest
from aftershock.inference.prefix_cache import PrefixCache, block_hashes


def words(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_hash_chain_covers_the_parent() -> None:
    a = words("a", 48)
    b = a[:16] + words("b", 32)  # same first block, different after it
    c = ["x", *a[1:]]  # differs only in the very first token
    ha, hb, hc = block_hashes(a, 16), block_hashes(b, 16), block_hashes(c, 16)
    assert len(ha) == 3
    assert ha[0] == hb[0] and ha[1:] != hb[1:]
    # The third block's tokens are equal in a and c, but its parent differs, so its hash does too.
    assert a[32:] == c[32:]
    assert all(x != y for x, y in zip(ha, hc, strict=True))
    assert block_hashes(list(a), 16) == ha  # stable: a pure function of the tokens


def test_partial_blocks_get_no_hash_and_are_not_cached() -> None:
    assert block_hashes(words("a", 15), 16) == []
    assert len(block_hashes(words("a", 31), 16)) == 1
    cache = PrefixCache(block_size=16, capacity_blocks=100)
    first = cache.acquire(words("a", 31))
    assert first.hit_tokens == 0 and len(first.cached) == 1 and first.private_blocks == 1
    cache.release(first)
    assert cache.cached_blocks == 1
    # Same 31 tokens again: only the full block hits, the 15-token tail is recomputed.
    again = cache.acquire(words("a", 31))
    assert again.hit_tokens == 16


def test_the_last_prompt_token_is_always_computed() -> None:
    cache = PrefixCache(block_size=16, capacity_blocks=100)
    cache.release(cache.acquire(words("a", 32)))
    # Both blocks are cached, but the second ends on the last token, which vLLM must compute.
    assert cache.acquire(words("a", 32)).hit_tokens == 16
    assert cache.acquire(words("a", 33)).hit_tokens == 32


def test_hits_stop_at_the_first_miss_and_are_counted_in_tokens() -> None:
    cache = PrefixCache(block_size=4, capacity_blocks=100)
    base = words("a", 12)
    cache.release(cache.acquire([*base, "end"]))
    other = [*base[:4], "X", *base[5:], "end"]  # second block differs, third is equal text
    alloc = cache.acquire(other)
    assert alloc.hit_tokens == 4
    assert cache.queries_tokens == 26 and cache.hit_tokens == 4


def test_lru_eviction_keeps_recently_used_prefixes() -> None:
    cache = PrefixCache(block_size=4, capacity_blocks=4)
    a, b, c = words("a", 8), words("b", 8), words("c", 8)  # two full blocks each, no partial
    cache.release(cache.acquire(a))
    cache.release(cache.acquire(b))
    assert cache.cached_blocks == 4 and cache.used_blocks == 0
    cache.release(cache.acquire([*a, "q"]))  # touches a: b is now least recently used
    cache.release(cache.acquire(c))  # needs two blocks: b's go
    assert cache.evicted_blocks >= 2
    assert all(cache.contains(h) for h in block_hashes(c, 4))
    assert not any(cache.contains(h) for h in block_hashes(b, 4))
    assert cache.acquire([*a, "q"]).hit_tokens == 8


def test_a_chain_is_evicted_from_its_tail() -> None:
    cache = PrefixCache(block_size=4, capacity_blocks=3)
    a = words("a", 12)
    cache.release(cache.acquire(a))
    cache.release(cache.acquire(words("z", 4)))  # one new block: a's last block goes, not its head
    ha = block_hashes(a, 4)
    assert cache.contains(ha[0]) and cache.contains(ha[1]) and not cache.contains(ha[2])


def test_blocks_in_use_are_never_evicted() -> None:
    cache = PrefixCache(block_size=4, capacity_blocks=2)
    held = cache.acquire(words("a", 8))
    assert cache.usage == 1.0
    other = cache.acquire(words("b", 8))  # no room: computed privately, not cached
    assert other.cached == [] and other.private_blocks == 2
    assert all(cache.contains(h) for h in block_hashes(words("a", 8), 4))
    cache.release(other)
    cache.release(held)
    assert cache.used_blocks == 0 and cache.cached_blocks == 2
    assert cache.acquire([*words("b", 8), "x"]).hit_tokens == 0


def test_usage_counts_shared_blocks_once_and_decode_blocks() -> None:
    cache = PrefixCache(block_size=4, capacity_blocks=10)
    one = cache.acquire([*words("s", 8), "u1"])
    two = cache.acquire([*words("s", 8), "u2"])
    assert two.hit_tokens == 8
    assert cache.used_blocks == 2 + 2  # shared prefix once, plus each request's partial block
    cache.grow(one, 9 + 8)  # decoding 8 more tokens: 17 tokens need 5 blocks
    assert cache.used_blocks == 2 + 3 + 1
    assert cache.usage == pytest.approx(0.6)
    cache.release(one)
    cache.release(two)
    assert cache.used_blocks == 0


def test_hold_shares_nothing() -> None:
    cache = PrefixCache(block_size=4, capacity_blocks=10)
    alloc = cache.hold(9)
    assert alloc.private_blocks == 3 and cache.cached_blocks == 0 and cache.used_blocks == 3


def test_rejects_empty_geometry() -> None:
    with pytest.raises(ValueError):
        PrefixCache(block_size=0, capacity_blocks=1)
