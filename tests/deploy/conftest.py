"""Fixtures of the deploy/ checks: the interpolated compose file and the rendered kustomizations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    COMPOSE,
    KUSTOMIZATIONS,
    cmd_output,
    interpolate,
    run_cmd,
    stack_env,
    tool,
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), stack_env()))
    return doc


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compose") / "staging.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in stack_env().items()))
    return path


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    kubectl = tool("kubectl")
    out = {}
    for name, path in KUSTOMIZATIONS.items():
        result = run_cmd([kubectl, "kustomize", str(path)])
        assert result.returncode == 0, cmd_output(result)
        out[name] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return out
