"""deploy/compose.yaml: docker-compose accepts it, and it runs real commands with real settings,
health-gated, with no secrets in it."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from aftershock.cli import _parser

from tests.deploy.support import (
    COMPOSE,
    DEPLOY,
    FOREIGN_ENV,
    PROFILES,
    SECRET_ENV,
    SETTINGS,
    VARIABLE,
    active,
    cmd_output,
    command_service,
    env_example,
    env_field,
    run_cmd,
    settings_from_env,
    stack_env,
    subcommands,
    tool,
)


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_config_is_valid(profile: str, env_file: Path) -> None:
    cmd = [tool("docker-compose"), "--env-file", str(env_file), "--profile", profile, "-f", str(COMPOSE)]
    result = run_cmd([*cmd, "config", "-q"])
    assert result.returncode == 0, cmd_output(result)


def test_compose_refuses_to_run_without_the_grafana_password(tmp_path: Path) -> None:
    env = {k: v for k, v in stack_env().items() if k != "GRAFANA_ADMIN_PASSWORD"}
    (tmp_path / "no-password.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    cmd = [tool("docker-compose"), "--env-file", str(tmp_path / "no-password.env"), "-f", str(COMPOSE)]
    result = run_cmd(
        [*cmd, "config", "-q"], env={k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"}
    )
    assert result.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in result.stderr, cmd_output(result)


def test_compose_services_run_real_cli_commands(compose: dict[str, Any]) -> None:
    commands = subcommands()
    seen = set()
    for name, svc in compose["services"].items():
        service = command_service(svc)
        if service is None:
            continue
        seen.add(service)
        assert service in commands and service in SETTINGS, f"{name}: `aftershock {service}` is no command"
        if service != "faultproxy":  # its flags are parsed by the fault proxy itself
            _parser().parse_args(list(svc["command"]))  # exits (fails the test) on an unknown flag
    assert seen == {"inference", "backend", "edge", "faultproxy"}


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_environment_sets_real_settings(
    profile: str, compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every AFTERSHOCK_* variable names a field of its service's settings class, and the settings
    class accepts every value (JSON engine args, booleans, ports)."""
    for name, svc in active(compose, profile).items():
        service = command_service(svc)
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        if service is None:
            assert not any(k.startswith("AFTERSHOCK_") for k in env), name
            continue
        for var in env:
            if var.startswith("AFTERSHOCK_"):
                assert env_field(service, var), f"{name}: {var} is not a {SETTINGS[service].__name__} field"
            else:
                assert FOREIGN_ENV.match(var), f"{name}: unexpected variable {var}"
        settings = settings_from_env(service, env, monkeypatch)
        assert settings.host == "0.0.0.0", f"{name}: containers must listen on 0.0.0.0"
        if service == "edge":
            assert settings.auth_config().enabled, "the staging edge must require API keys"


def test_compose_healthchecks_probe_the_service_they_run(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        service = command_service(svc)
        if service == "faultproxy":  # the Toxiproxy state exporter: nothing waits for it
            assert "AFTERSHOCK_FAULTPROXY_EXPORT_API" in svc["environment"] and "healthcheck" not in svc
        elif service is not None:
            assert svc["healthcheck"]["test"] == ["CMD", "aftershock-healthcheck", service], name


def test_compose_start_order_is_health_gated(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            # A profile-less service must not depend on one in a profile (compose refuses to start).
            if not svc.get("profiles"):
                assert not services[dep].get("profiles"), f"{name} depends on {dep}, which has a profile"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no healthcheck"
    healthy = {
        name: {d for d, s in (svc.get("depends_on") or {}).items() if s["condition"] == "service_healthy"}
        for name, svc in services.items()
    }
    assert {"backend", "toxiproxy", "redis"} <= healthy["edge"]
    assert {"toxiproxy", "redis"} <= healthy["backend"]
    assert "prometheus" in healthy["grafana"]


def test_compose_gpu_replicas_reserve_gpus(compose: dict[str, Any]) -> None:
    for name, svc in active(compose, "gpu").items():
        if command_service(svc) == "inference":
            (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
            assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
            assert svc["environment"]["AFTERSHOCK_INFERENCE_ENGINE"] == "vllm"
            assert svc["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
            json.loads(svc["environment"]["AFTERSHOCK_INFERENCE_VLLM_ENGINE_ARGS"])
    for name, svc in active(compose, "sim").items():
        if command_service(svc) == "inference":
            assert "deploy" not in svc and svc["environment"]["AFTERSHOCK_INFERENCE_ENGINE"] == "sim", name


def test_no_secrets_in_the_compose_file() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    for name, svc in raw["services"].items():
        for var, value in (svc.get("environment") or {}).items():
            if SECRET_ENV.search(var):
                assert re.fullmatch(r"\$\{[A-Z_]+(:?[-?][^}]*)?\}", str(value)), (
                    f"{name}: {var} must come from .env"
                )
    example = env_example()
    for var, value in example.items():
        if SECRET_ENV.search(var):
            assert value == "", f".env.example must leave {var} empty"
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert ".env" in ignored and "secrets/" in ignored


def test_env_example_documents_every_variable() -> None:
    used = {m.group(1) for m in VARIABLE.finditer(COMPOSE.read_text())}
    assert used == set(env_example())
