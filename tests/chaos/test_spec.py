"""Drill files are validated with clear errors, and every drill in chaos/ loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from aftershock.chaos.spec import Drill, load_drill
from pydantic import ValidationError

from tests.conftest import TESTS

DRILLS = sorted(p for p in (TESTS.parent / "chaos").glob("*.yaml") if p.name != "models.yaml")


@pytest.mark.parametrize("path", DRILLS, ids=[p.stem for p in DRILLS])
def test_every_drill_loads(path: Path) -> None:
    drill = load_drill(path)
    assert drill.faults and drill.title
    short = drill.scaled(0.5)
    assert short.load.duration_s == drill.load.duration_s / 2
    assert short.fault_end_s == drill.fault_end_s / 2


def _drill(**fault: object) -> dict[str, object]:
    return {
        "title": "t",
        "load": {"duration_s": 10},
        "faults": [{"name": "f", "start_s": 1, "end_s": 2, **fault}],
    }


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"kind": "toxic", "proxy": "edge_backend"}, "needs a toxic"),
        ({"kind": "toxic", "toxic": {"type": "latency"}}, "needs a proxy"),
        ({"kind": "kill_replica"}, "needs a replica"),
        ({"kind": "toxic", "proxy": "p", "toxic": {"type": "earthquake"}}, "latency"),
        ({"kind": "proxy_down", "proxy": "p", "end_s": 0.5}, "end_s must come after start_s"),
        ({"kind": "proxy_down", "proxy": "p", "end_s": 30}, "ends after the load"),
    ],
)
def test_bad_drills_say_what_is_wrong(fault: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Drill.model_validate(_drill(**fault))


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        Drill.model_validate({**_drill(kind="proxy_down", proxy="p"), "expectations": {}})
