"""benchmarks/overhead_configs.py: the configurations overhead.py's --configs names."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from overhead_configs import CONFIGS, DEFAULT_CONFIGS, config_names, export_to, stack_config


def test_config_names_accept_base_and_reject_unknown() -> None:
    assert config_names("base") == ["telemetry-on"]
    assert config_names("base,telemetry-on,dedupe-on") == ["telemetry-on", "dedupe-on"]
    with pytest.raises(SystemExit):
        config_names("nonsense")


def test_grpc_defaults_configuration_differs_from_base_only_in_grpc_experiments() -> None:
    export_to(4317)
    base, grpc_defaults = CONFIGS["telemetry-on"], CONFIGS["grpc-event-engine"]
    for service in ("inference", "backend", "edge"):
        assert grpc_defaults.env[service] == {**base.env[service], "GRPC_EXPERIMENTS": ""}
        assert base.env[service]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4317"
    # Opt-in: the default run is the three configurations BENCHMARKS.md's figures come from.
    assert "grpc-event-engine" not in config_names(",".join(DEFAULT_CONFIGS))


def test_instrumentor_configuration_differs_from_base_only_at_the_edge() -> None:
    export_to(4317)
    base, instrumentor = CONFIGS["telemetry-on"], CONFIGS["telemetry-instrumentor"]
    assert instrumentor.env["edge"] == {**base.env["edge"], "AFTERSHOCK_EDGE_HTTP_TRACING": "instrumentor"}
    assert instrumentor.env["backend"] == base.env["backend"]
    assert instrumentor.env["inference"] == base.env["inference"]
    assert "telemetry-instrumentor" not in DEFAULT_CONFIGS


def test_each_configuration_runs_on_its_own_stack(tmp_path: Path) -> None:
    """overhead.py and deltas.py start the same stack for a configuration name."""
    for name in DEFAULT_CONFIGS:
        config = stack_config(name, tmp_path / name)
        assert config.redis == (name == "dedupe-on")
        assert config.env == CONFIGS[name].env
        assert config.replicas == 1 and config.log_dir == tmp_path / name
        assert config.models_file is not None and config.models_file.name == "models.yaml"
        assert config.models_file.exists()
