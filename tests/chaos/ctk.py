"""Reading a drill's journal.json with chaostoolkit-lib's own code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chaoslib.activity import ensure_activity_is_valid  # type: ignore[import-untyped]
from chaoslib.experiment import ensure_experiment_is_valid  # type: ignore[import-untyped]
from chaoslib.run import initialize_run_journal  # type: ignore[import-untyped]


def load_journal(path: Path) -> dict[str, Any]:
    """Loads a journal and validates it as Chaos Toolkit would: the experiment it ran, every
    activity it ran and rolled back, and the keys chaostoolkit-lib gives every journal."""
    journal: dict[str, Any] = json.loads(path.read_text())
    ensure_experiment_is_valid(journal["experiment"])
    missing = set(initialize_run_journal(journal["experiment"])) - set(journal)
    assert not missing, f"journal lacks {missing}"
    assert journal["status"] in ("completed", "failed", "aborted", "interrupted")
    assert isinstance(journal["deviated"], bool)
    for entry in journal["run"] + journal["rollbacks"]:
        ensure_activity_is_valid(entry["activity"])
        assert entry["status"] in ("succeeded", "failed")
    states = journal["steady_states"]
    for state in (states["before"], states["after"], *states["during"]):
        assert isinstance(state["steady_state_met"], bool)
        for probe in state["probes"]:
            ensure_activity_is_valid(probe["activity"])
    return journal
