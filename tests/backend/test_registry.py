"""The model registry file: load, fallback catalogue, last-good on a bad edit, reload on change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from aftershock.backend.registry import ModelRegistry, RegistryConfig, load_registry_file
from aftershock.backend.settings import DEFAULT_FALLBACK
from aftershock.metrics import BackendMetrics, new_registry
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

GOOD: dict[str, list[dict[str, object]]] = {
    "replicas": [{"name": "r0", "address": "127.0.0.1:7000"}, {"name": "r1", "address": "127.0.0.1:7001"}],
    "models": [{"name": "alpha", "replicas": ["r0", "r1"]}, {"name": "beta", "replicas": ["r1"]}],
}


def write(path: Path, doc: object, mtime_ns: int) -> None:
    """Write and stamp an explicit modification time (an edit always moves it forward)."""
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def fallback_gauge(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("aftershock_registry_fallback")


@pytest.fixture
def prom() -> CollectorRegistry:
    return new_registry()


def make(path: Path | None, prom: CollectorRegistry) -> ModelRegistry:
    return ModelRegistry(path, DEFAULT_FALLBACK, BackendMetrics(prom))


def test_loads_the_file(tmp_path: Path, prom: CollectorRegistry) -> None:
    path = tmp_path / "registry.yaml"
    write(path, GOOD, 1_000_000_000)
    reg = make(path, prom)
    assert not reg.using_fallback
    assert reg.model_names() == frozenset({"alpha", "beta"})
    assert reg.config.replicas_for("alpha") == ("r0", "r1")
    assert reg.config.replicas_for("gamma") is None
    assert fallback_gauge(prom) == 0
    assert load_registry_file(path) == reg.config


def test_json_is_yaml_too(tmp_path: Path, prom: CollectorRegistry) -> None:
    path = tmp_path / "registry.json"
    write(
        path,
        '{"replicas": [{"name": "r0", "address": "h:1"}], "models": [{"name": "m", "replicas": ["r0"]}]}',
        1_000_000_000,
    )
    assert make(path, prom).model_names() == frozenset({"m"})


def test_no_file_configured_serves_the_fallback(prom: CollectorRegistry) -> None:
    reg = make(None, prom)
    assert reg.using_fallback
    assert reg.config == DEFAULT_FALLBACK
    assert reg.model_names() == frozenset({"sim-small", "sim-large"})
    assert fallback_gauge(prom) == 1
    assert reg.reload() is False


@pytest.mark.parametrize(
    "content",
    [
        None,  # missing file
        "replicas: [unclosed",  # not YAML
        "models: 5\n",  # wrong shape
        yaml.safe_dump(
            {"replicas": [{"name": "r0", "address": "h:1"}], "models": [{"name": "m", "replicas": ["rX"]}]}
        ),
        yaml.safe_dump({**GOOD, "surprise": True}),  # unknown field
    ],
    ids=["missing", "not-yaml", "wrong-shape", "unknown-replica", "extra-field"],
)
def test_unreadable_file_at_start_serves_the_fallback(
    tmp_path: Path, prom: CollectorRegistry, content: str | None
) -> None:
    path = tmp_path / "registry.yaml"
    if content is not None:
        write(path, content, 1_000_000_000)
    reg = make(path, prom)
    assert reg.using_fallback
    assert reg.config == DEFAULT_FALLBACK
    assert fallback_gauge(prom) == 1
    # Once the file is fixed it is loaded and the gauge clears.
    write(path, GOOD, 2_000_000_000)
    assert reg.reload() is True
    assert not reg.using_fallback
    assert reg.model_names() == frozenset({"alpha", "beta"})
    assert fallback_gauge(prom) == 0


def test_bad_edit_after_a_good_load_keeps_the_last_good(tmp_path: Path, prom: CollectorRegistry) -> None:
    path = tmp_path / "registry.yaml"
    write(path, GOOD, 1_000_000_000)
    reg = make(path, prom)
    good = reg.config
    write(path, "models: [{name: x, replicas: [nobody]}]\n", 2_000_000_000)
    assert reg.reload() is False
    assert reg.config == good
    assert not reg.using_fallback
    assert fallback_gauge(prom) == 0
    path.unlink()  # a deleted file is no better
    assert reg.reload() is False
    assert reg.config == good


def test_changed_file_is_reloaded_and_unchanged_is_not(tmp_path: Path, prom: CollectorRegistry) -> None:
    path = tmp_path / "registry.yaml"
    write(path, GOOD, 1_000_000_000)
    reg = make(path, prom)
    assert reg.reload() is False  # same mtime: not even re-read
    changed = {**GOOD, "models": [*GOOD["models"], {"name": "gamma", "replicas": ["r0"]}]}
    write(path, changed, 2_000_000_000)
    assert reg.reload() is True
    assert reg.model_names() == frozenset({"alpha", "beta", "gamma"})
    # Touched but identical content: re-read, but the config in force did not change.
    write(path, changed, 3_000_000_000)
    assert reg.reload() is False


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {
                "replicas": [{"name": "r0", "address": "h:1"}],
                "models": [{"name": "m", "replicas": ["r0", "r9"]}],
            },
            "unknown replicas ['r9']",
        ),
        ({"replicas": [{"name": "r0", "address": "h:1"}, {"name": "r0", "address": "h:2"}]}, "unique"),
        (
            {"replicas": [{"name": "r0", "address": "h:1"}], "models": [{"name": "m", "replicas": []}]},
            "replicas",
        ),
        ({"replicas": [{"name": "", "address": "h:1"}]}, "name"),
    ],
)
def test_validation(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        RegistryConfig.model_validate(doc)
    assert message in str(info.value)
