"""Shared by the deploy/ checks: paths, the settings classes per command, compose parsing with
docker compose's interpolation, and helpers over rendered Kubernetes objects."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from aftershock.backend import service as backend_service
from aftershock.backend.settings import BackendSettings
from aftershock.cli import _parser
from aftershock.edge.settings import EdgeSettings
from aftershock.faultproxy.settings import FaultProxySettings
from aftershock.inference import service as inference_service
from aftershock.inference.settings import InferenceSettings
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = {
    "base": K8S / "base",
    "staging": K8S / "overlays" / "staging",
    "sim": K8S / "overlays" / "sim",
}
PROFILES = ("sim", "gpu")
# The Kubernetes release the manifests are validated against (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.30.0"

# The settings class of each service command, and what its env prefix must be.
SETTINGS: dict[str, type[BaseSettings]] = {
    "inference": InferenceSettings,
    "backend": BackendSettings,
    "edge": EdgeSettings,
    "faultproxy": FaultProxySettings,
}
GRPC_SERVICES = {"backend": backend_service.SERVICE_NAME, "inference": inference_service.SERVICE_NAME}
# Variables that are not Aftershock settings but are read by a library or the image.
FOREIGN_ENV = re.compile(
    r"^(OTEL_[A-Z_]+|SENTRY_DSN|SENTRY_ENVIRONMENT|HF_TOKEN|HF_HOME|VLLM_[A-Z_]+|TOXIPROXY_URL)$"
)
# Names whose values are secrets: compose may only take them from the environment (.env).
SECRET_ENV = re.compile(r"(DSN|PASSWORD|TOKEN|SECRET|_API_KEYS)$")
SECRETS_REFERENCED = {
    "aftershock-edge-api-keys",
    "aftershock-redis",
    "aftershock-sentry",
    "aftershock-hf-token",
}
MISSING = {
    "docker-compose": "Debian's `docker-compose` package (1.29: apt-get install docker-compose)",
    "kubectl": "`kubectl` (with its built-in kustomize)",
    "promtool": "Debian's `prometheus` package",
    "amtool": "Debian's `prometheus-alertmanager` package",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: install {MISSING[name]} (scripts/setup.sh)", pytrace=False)
    return path


def run_cmd(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, **kwargs)


def cmd_output(result: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(map(str, result.args))}\n{result.stdout}{result.stderr}"


def load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def setting_default(service: str, field: str) -> Any:
    return SETTINGS[service].model_fields[field].default


def env_field(service: str, name: str) -> str | None:
    """The settings field an AFTERSHOCK_<SERVICE>_* variable sets, or None when it names no field."""
    prefix = str(SETTINGS[service].model_config.get("env_prefix", ""))
    if not name.startswith(prefix):
        return None
    field = name[len(prefix) :].lower()
    return field if field in SETTINGS[service].model_fields else None


def settings_from_env(service: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The service's settings as the container's environment gives them (JSON fields parsed as such)."""
    with monkeypatch.context() as m:
        for var in [v for v in os.environ if v.startswith("AFTERSHOCK_")]:
            m.delenv(var)
        for var, value in env.items():
            m.setenv(var, value)
        return SETTINGS[service]()


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def stack_env() -> dict[str, str]:
    """.env.example plus the one value it must leave empty (a secret): what a filled-in .env gives."""
    return {**env_example(), "GRAFANA_ADMIN_PASSWORD": "not-a-secret"}


VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        if op in (":-", "-") and (value is None or (op == ":-" and value == "")):
            return arg
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise ValueError(f"{name} is required: {arg}")
        return value or ""

    return VARIABLE.sub(sub, text)


def active(compose: dict[str, Any], profile: str) -> dict[str, dict[str, Any]]:
    """The services a `--profile <profile>` run starts."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if not svc.get("profiles") or profile in svc["profiles"]
    }


def command_service(svc: dict[str, Any]) -> str | None:
    """The Aftershock service a compose service runs (its command's first word), None for others."""
    image = str(svc.get("image", ""))
    if not image.split(":")[0].startswith("aftershock"):
        return None
    return str(svc["command"][0])


def hostnames(name: str, svc: dict[str, Any]) -> set[str]:
    names = {name}
    for net in (svc.get("networks") or {}).values():
        names.update((net or {}).get("aliases", []))
    return names


def resolve(compose_services: dict[str, dict[str, Any]], host: str) -> tuple[str, dict[str, Any]]:
    matches = [(n, s) for n, s in compose_services.items() if host in hostnames(n, s)]
    assert len(matches) == 1, f"{host!r} names {len(matches)} services in this profile: {matches}"
    return matches[0]


def effective(service: str, svc_env: dict[str, Any], field: str) -> Any:
    """A setting's value in a container: its AFTERSHOCK_* variable, else the class default."""
    prefix = str(SETTINGS[service].model_config.get("env_prefix", ""))
    raw = svc_env.get(prefix + field.upper())
    return (
        int(raw)
        if raw is not None and field.endswith("port")
        else (raw if raw is not None else setting_default(service, field))
    )


def listen_port(service: str, svc: dict[str, Any]) -> int:
    """The port a compose service serves on (for the real Toxiproxy: its -port flag)."""
    if service == "toxiproxy" and command_service(svc) is None:
        flags = dict(a.lstrip("-").split("=", 1) for a in svc["command"] if "=" in a)
        return int(flags.get("port", 8474))
    return int(effective(service, svc.get("environment", {}), "port"))


def toxiproxy_config() -> list[dict[str, Any]]:
    proxies: list[dict[str, Any]] = json.loads((DEPLOY / "config" / "toxiproxy.json").read_text())
    return proxies


def proxy(name: str) -> dict[str, Any]:
    (found,) = [p for p in toxiproxy_config() if p["name"] == name]
    return found


def hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def redis_hostport(url: str) -> tuple[str, int]:
    m = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", url)
    assert m, f"not a redis://host:port/db URL: {url}"
    return m.group(1), int(m.group(2))


def alert_job_matchers() -> list[str]:
    matchers = []
    for path in sorted((ROOT / "alerts").glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                matchers += re.findall(r'job\s*=~\s*"([^"]+)"', rule["expr"])
                assert not re.search(r'job\s*(=|!=|!~)\s*"', rule["expr"].replace("=~", "")), rule["expr"]
    assert matchers, "alerts/ should match scrape jobs by name"
    return matchers


def check_job_names(jobs: dict[str, str | None]) -> None:
    """jobs: job name -> the Aftershock service it scrapes (None: not an Aftershock service)."""
    for regex in alert_job_matchers():
        meant = {s for s in ("edge", "backend", "inference") if s in regex}
        for job, service in jobs.items():
            matches = re.fullmatch(regex, job) is not None
            assert matches == (service in meant), f"job {job!r} ({service}) vs alert matcher job=~{regex!r}"


def project_version() -> str:
    m = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert m
    return m.group(1)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers_of(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                yield d, c


def container_env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def models_configmap(config_maps: dict[str, dict[str, Any]]) -> str:
    (name,) = [n for n in config_maps if n.startswith("aftershock-models")]
    return name


healthcheck = load_module("aftershock_deploy_healthcheck", DEPLOY / "healthcheck.py")
generate = load_module("aftershock_deploy_generate", K8S / "generate.py")


def host_path(svc: dict[str, Any], container_path: str) -> str:
    """The host path (relative to deploy/) behind a path in a compose container, through the bind
    mount that holds it (a file mount or a folder mount above it)."""
    best = ""
    source = ""
    for volume in svc.get("volumes", []):
        src, dst = volume.split(":")[:2]
        if (container_path == dst or container_path.startswith(dst.rstrip("/") + "/")) and len(dst) > len(
            best
        ):
            best, source = dst, src
    assert best, f"nothing mounted at {container_path}"
    return source + container_path[len(best) :]
