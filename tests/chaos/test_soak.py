"""The soak drill, short (CI): keyed requests with client retries under rotating faults at every
hop and a replica killed under load; no key lost and goodput at least 99.9%. The full run is
`aftershock drill chaos/soak/soak.yaml` (about 10,000 keys)."""

from __future__ import annotations

import json

import pytest

from tests.chaos.ctk import load_journal
from tests.chaos.test_drills import ROOT, _drill
from tests.conftest import ARTIFACTS

pytestmark = pytest.mark.e2e

SOAK = ROOT / "chaos" / "soak" / "soak.yaml"


def test_soak_short() -> None:
    out = ARTIFACTS / "drills-soak"
    result = _drill(SOAK, out, scale="0.1")
    data = json.loads((out / "soak" / "report.json").read_text())
    assert result.returncode == 0, result.stdout[-2000:] + json.dumps(data["checks"], indent=1)
    figures = data["figures"]
    assert figures["keys"] > 300 and figures["keys_lost"] == 0 and figures["goodput"] >= 0.999
    assert len(data["drill"]["faults"]) == 5
    assert load_journal(out / "soak" / "journal.json")["deviated"] is False
