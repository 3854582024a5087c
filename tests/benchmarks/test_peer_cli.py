"""benchmarks/peer.py, small and without LiteLLM (its install is the benchmark's, not the suite's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import litellm_proxy  # noqa: E402


@pytest.mark.e2e
def test_quick_peer_run_against_the_upstream(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "peer.py"),
            "--quick",
            "--no-litellm",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT / "platform")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "aftershock" in proc.stdout and "added p50" in proc.stdout
    (report,) = tmp_path.glob("peer-*.json")
    (figures,) = json.loads(report.read_text())["raw"]
    for kind in ("nonstream", "stream"):
        for target in ("direct", "aftershock"):
            assert figures[f"{kind}.{target}.errors"] == 0
            assert figures[f"{kind}.{target}.tokens_per_req"] == 16  # counted from replies and streams
        assert figures[f"{kind}.aftershock.cpu_ms_per_req.edge"] > 0
        assert figures[f"{kind}.aftershock.cpu_ms_per_req.inference"] > 0
        # The open loop's targets took turns in one window: both ran, one steal reading for both.
        assert all(figures[f"{kind}.{target}.open_requests"] > 0 for target in ("direct", "aftershock"))
        assert figures[f"{kind}.direct.open_steal_pct"] == figures[f"{kind}.aftershock.open_steal_pct"]


def test_a_litellm_env_made_elsewhere_is_not_used(tmp_path: Path) -> None:
    """A venv moved after it was made keeps scripts whose #! names its old path: reinstall then."""
    script = tmp_path / "litellm"
    assert not litellm_proxy.usable(script)  # missing
    script.write_text(f"#!{sys.executable}\nprint('hi')\n")
    assert litellm_proxy.usable(script)
    script.write_text(f"#!{tmp_path / 'gone' / 'bin' / 'python3'}\nprint('hi')\n")
    assert not litellm_proxy.usable(script)


def test_the_peer_is_installed_with_its_whole_environment_pinned() -> None:
    """litellm's own pin let its dependencies float: the yardstick moved between installs."""
    version = litellm_proxy.LITELLM_VERSION
    args = litellm_proxy.install_args(version)
    assert args[args.index("-c") + 1] == str(litellm_proxy.constraints(version))
    pins = {
        line.split("==")[0].lower(): line.split("==")[1]
        for line in litellm_proxy.constraints(version).read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert pins["litellm"] == version
    assert {"fastapi", "uvicorn", "httpx", "openai", "pydantic"} <= set(pins)
    # An environment made from other pins (or none) is another directory, never reused.
    assert litellm_proxy.env_dir(version).name.startswith(f"litellm-{version}-")
    assert litellm_proxy.env_dir("0.0.0").name == "litellm-0.0.0"
