"""aftershock.heap in a fresh interpreter: freezing the test process's own heap would keep its
cyclic garbage for the rest of the run."""

from __future__ import annotations

import json
import subprocess
import sys

from aftershock import heap

PROBE = """
import gc, json, weakref
from aftershock import heap

class Node:
    pass

cycle = Node(); cycle.self = cycle
dead = weakref.ref(cycle)
del cycle  # garbage only a collection can free
alive = Node()
before = gc.get_threshold()
frozen = heap.prepare_for_serving()
young = {id(o) for g in range(3) for o in gc.get_objects(generation=g)}
print(json.dumps({
    "frozen": frozen, "freeze_count": gc.get_freeze_count(), "before": before,
    "after": gc.get_threshold(), "garbage_freed": dead() is None, "alive_frozen": id(alive) not in young,
}))
"""


def _probe() -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    result: dict[str, object] = json.loads(out.stdout.splitlines()[-1])
    return result


def test_what_is_alive_is_frozen_and_garbage_is_freed_first() -> None:
    got = _probe()
    assert got["garbage_freed"] is True
    assert got["alive_frozen"] is True
    assert got["frozen"] == got["freeze_count"]
    assert isinstance(got["frozen"], int) and got["frozen"] > 1_000  # a bare interpreter holds some 8 000


def test_young_collections_are_spaced_out_and_older_thresholds_kept() -> None:
    got = _probe()
    before, after = got["before"], got["after"]
    assert isinstance(before, list) and isinstance(after, list)
    assert after == [heap.YOUNG_THRESHOLD, *before[1:]]
    assert before[0] < heap.YOUNG_THRESHOLD
