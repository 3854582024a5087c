"""Placement: affinity by key on a hash ring, bounded by load; least loaded without a key."""

from __future__ import annotations

import collections

from aftershock.backend.hashring import HashRing, load_bound, point
from aftershock.backend.placement import Candidate, EngineLoad, Placement, PlacementConfig, score
from aftershock.backend.prefix import block_hashes, prefix_key, rendered_prompt
from aftershock.clock import FakeClock
from aftershock.v1 import generation_pb2 as pb

IDLE = EngineLoad()


def cands(**in_flight: int) -> list[Candidate]:
    return [Candidate(n, f, IDLE) for n, f in in_flight.items()]


def test_ring_preference_lists_every_member_once_and_is_stable() -> None:
    ring = HashRing(["a", "b", "c"])
    order = list(ring.preference(point(b"key")))
    assert sorted(order) == ["a", "b", "c"]
    assert list(HashRing(["c", "a", "b"]).preference(point(b"key"))) == order


def test_removing_a_member_moves_only_its_keys() -> None:
    keys = [point(str(i).encode()) for i in range(2000)]
    before = {k: next(HashRing(["a", "b", "c"]).preference(k)) for k in keys}
    after = {k: next(HashRing(["a", "b"]).preference(k)) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == "c" for k in moved)


def test_ring_spreads_keys_roughly_evenly() -> None:
    ring = HashRing(["a", "b", "c", "d"])
    homes = collections.Counter(next(ring.preference(point(str(i).encode()))) for i in range(8000))
    assert min(homes.values()) > 8000 / 4 * 0.6, homes


def test_same_key_goes_home_while_under_the_bound() -> None:
    placement = Placement(PlacementConfig())
    key = point(b"system prompt")
    home, reason = placement.choose(cands(a=0, b=0, c=0), key)
    assert reason == "prefix"
    for _ in range(5):
        assert placement.choose(cands(a=1, b=1, c=1), key) == (home, "prefix")


def test_a_busy_home_spills_to_the_next_in_ring_order() -> None:
    placement = Placement(PlacementConfig(load_factor=1.25))
    key = point(b"hot prefix")
    order = list(HashRing(["a", "b", "c"]).preference(key))
    loads = {order[0]: 6, order[1]: 1, order[2]: 0}
    name, reason = placement.choose(cands(**loads), key)
    assert (name, reason) == (order[1], "spill")
    # Negative control: with no bound (a huge factor) the hot home keeps every request.
    unbounded = Placement(PlacementConfig(load_factor=1000.0))
    assert unbounded.choose(cands(**loads), key) == (order[0], "prefix")


def test_no_key_or_least_loaded_policy_picks_the_least_loaded() -> None:
    placement = Placement(PlacementConfig())
    assert placement.choose(cands(a=3, b=1, c=2), None) == ("b", "least_loaded")
    lo = Placement(PlacementConfig(policy="least_loaded"))
    assert lo.choose(cands(a=3, b=1, c=2), point(b"k")) == ("b", "least_loaded")


def test_engine_reported_queue_counts_beyond_in_flight() -> None:
    config = PlacementConfig()
    queued = Candidate("a", 0, EngineLoad(running=4, waiting=3, kv_cache_usage=0.5))
    idle = Candidate("b", 1, IDLE)
    assert score(queued, config) > score(idle, config)
    assert Placement(config).choose([queued, idle], None) == ("b", "least_loaded")


def test_load_bound_is_factor_times_mean_counting_the_new_request() -> None:
    assert load_bound(total_load=5, members=2, factor=1.25) == 1.25 * 3


def test_block_hashes_chain_and_ignore_the_partial_block() -> None:
    a = block_hashes("x" * 64 + "y" * 64 + "tail", 64, 10)
    b = block_hashes("x" * 64 + "y" * 64 + "other tail!", 64, 10)
    assert len(a) == 2 and a == b
    # Chained: the same second block after a different first block hashes differently.
    c = block_hashes("z" * 64 + "y" * 64, 64, 10)
    assert c[1] != a[1]


def test_prefix_key_is_shared_by_a_common_system_prompt() -> None:
    system = "You are a careful assistant. " * 20

    def chat(user: str) -> pb.GenerateRequest:
        req = pb.GenerateRequest(model="m")
        req.chat.messages.add(role="system", content=system)
        req.chat.messages.add(role="user", content=user)
        return req

    k1, k2 = prefix_key(chat("hello"), 64, 4), prefix_key(chat("a different question"), 64, 4)
    assert k1 is not None and k1 == k2
    assert prefix_key(pb.GenerateRequest(prompt="short"), 64, 4) is None
    assert rendered_prompt(pb.GenerateRequest(prompt="p")) == "p"


def test_a_hot_key_keeps_at_most_its_bounded_share_over_time() -> None:
    clock = FakeClock()
    placement = Placement(PlacementConfig(load_factor=1.25, share_min_per_replica=5), clock)
    hot, other = point(b"hot"), [point(f"k{i}".encode()) for i in range(60)]
    homes: collections.Counter[str] = collections.Counter()
    for i in range(600):
        clock.advance(0.01)
        key = hot if i % 2 == 0 else other[i % 60]  # half the traffic shares one prefix
        homes[placement.choose(cands(a=0, b=0, c=0), key)[0]] += 1
    assert max(homes.values()) <= 1.25 * 600 / 3 + 2, homes
    # Negative control: without the time-averaged bound, the hot key's home takes far more.
    sticky = Placement(PlacementConfig(share_min_per_replica=10**9), FakeClock())
    counts = collections.Counter(
        sticky.choose(cands(a=0, b=0, c=0), hot if i % 2 == 0 else other[i % 60])[0] for i in range(600)
    )
    assert max(counts.values()) > 1.25 * 600 / 3 + 2, counts


def test_old_placements_fade() -> None:
    clock = FakeClock()
    placement = Placement(PlacementConfig(share_window_s=1.0, share_min_per_replica=1), clock)
    key = point(b"p")
    home = placement.choose(cands(a=0, b=0), key)[0]
    for _ in range(50):
        placement.choose(cands(a=0, b=0), key)
    clock.advance(60.0)  # sixty time constants later the history is gone: the home is home again
    assert placement.choose(cands(a=0, b=0), key) == (home, "prefix")


def test_a_replica_that_lost_a_hedge_race_is_a_last_resort() -> None:
    placement = Placement(PlacementConfig())
    key = point(b"prefix")
    home = placement.choose(cands(a=0, b=0), key)[0]
    other = "b" if home == "a" else "a"
    slow = [Candidate(home, 0, IDLE, slow=True), Candidate(other, 3, IDLE)]
    assert placement.choose(slow, key)[0] == other
    assert placement.choose(slow, None)[0] == other
    # Still used when it is the only one left.
    assert placement.choose([Candidate(home, 0, IDLE, slow=True)], key)[0] == home
