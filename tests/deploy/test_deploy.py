"""deploy/ validated offline: the compose file with Debian's docker-compose, the Kubernetes manifests
with kustomize and kubernetes-validate, the Prometheus and Alertmanager configs with promtool and
amtool, and drift against the code (CLI commands and flags, settings fields and defaults, ports,
gRPC health names, Toxiproxy proxy names, models, alert job matchers, generated files)."""

from __future__ import annotations

import argparse
import functools
import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from aftershock.backend import service as backend_service
from aftershock.backend.registry import load_registry_file
from aftershock.backend.settings import BackendSettings
from aftershock.chaos import topology
from aftershock.chaos.spec import Load, load_drill
from aftershock.cli import _parser
from aftershock.edge.settings import EdgeSettings
from aftershock.faultproxy.settings import FaultProxySettings
from aftershock.inference import service as inference_service
from aftershock.inference.settings import InferenceSettings
from aftershock.ports import free_port
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
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
    "toxiproxy": FaultProxySettings,
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


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: install {MISSING[name]} (scripts/setup.sh)", pytrace=False)
    return path


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, **kwargs)


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(map(str, result.args))}\n{result.stdout}{result.stderr}"


def _load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = _load_module("aftershock_deploy_healthcheck", DEPLOY / "healthcheck.py")
generate = _load_module("aftershock_deploy_generate", K8S / "generate.py")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _default(service: str, field: str) -> Any:
    return SETTINGS[service].model_fields[field].default


def _env_field(service: str, name: str) -> str | None:
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


# -- compose: parsing with the same interpolation docker compose applies ----------------------------


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


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        if op in (":-", "-") and (value is None or (op == ":-" and value == "")):
            return arg
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise ValueError(f"{name} is required: {arg}")
        return value or ""

    return _VAR.sub(sub, text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), stack_env()))
    return doc


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
        else (raw if raw is not None else _default(service, field))
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


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def _redis_hostport(url: str) -> tuple[str, int]:
    m = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", url)
    assert m, f"not a redis://host:port/db URL: {url}"
    return m.group(1), int(m.group(2))


# -- compose: docker-compose itself -------------------------------------------------------------------


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compose") / "staging.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in stack_env().items()))
    return path


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_config_is_valid(profile: str, env_file: Path) -> None:
    cmd = [_tool("docker-compose"), "--env-file", str(env_file), "--profile", profile, "-f", str(COMPOSE)]
    result = _run([*cmd, "config", "-q"])
    assert result.returncode == 0, _output(result)


def test_compose_refuses_to_run_without_the_grafana_password(tmp_path: Path) -> None:
    env = {k: v for k, v in stack_env().items() if k != "GRAFANA_ADMIN_PASSWORD"}
    (tmp_path / "no-password.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    cmd = [_tool("docker-compose"), "--env-file", str(tmp_path / "no-password.env"), "-f", str(COMPOSE)]
    result = _run(
        [*cmd, "config", "-q"], env={k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"}
    )
    assert result.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in result.stderr, _output(result)


# -- compose: drift against the code ----------------------------------------------------------------


def test_compose_services_run_real_cli_commands(compose: dict[str, Any]) -> None:
    commands = _subcommands()
    seen = set()
    for name, svc in compose["services"].items():
        service = command_service(svc)
        if service is None:
            continue
        seen.add(service)
        assert service in commands and service in SETTINGS, f"{name}: `aftershock {service}` is no command"
        if service != "toxiproxy":  # its flags are parsed by the fault proxy itself
            _parser().parse_args(list(svc["command"]))  # exits (fails the test) on an unknown flag
    assert seen == {"inference", "backend", "edge"}


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
                assert _env_field(service, var), f"{name}: {var} is not a {SETTINGS[service].__name__} field"
            else:
                assert FOREIGN_ENV.match(var), f"{name}: unexpected variable {var}"
        settings = settings_from_env(service, env, monkeypatch)
        assert settings.host == "0.0.0.0", f"{name}: containers must listen on 0.0.0.0"
        if service == "edge":
            assert settings.auth_config().enabled, "the staging edge must require API keys"


def test_compose_healthchecks_probe_the_service_they_run(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        service = command_service(svc)
        if service is not None:
            assert svc["healthcheck"]["test"] == ["CMD", "aftershock-healthcheck", service], name


def _through(
    services: dict[str, dict[str, Any]], proxy_name: str, client_target: tuple[str, int]
) -> tuple[str, dict[str, Any], int]:
    """A client dials `client_target`: it must be the proxy's listen port on Toxiproxy. Returns the
    service behind the proxy and the port dialled there."""
    p = proxy(proxy_name)
    assert client_target == ("toxiproxy", _hostport(p["listen"])[1]), (proxy_name, client_target)
    host, port = _hostport(p["upstream"])
    up_name, up_svc = resolve(services, host)
    return up_name, up_svc, port


def test_proxies_are_the_chaos_topology_and_every_hop_goes_through_them(compose: dict[str, Any]) -> None:
    proxies = toxiproxy_config()
    for p in proxies:
        assert set(p) == {"name", "listen", "upstream", "enabled"} and p["enabled"] is True, p
        assert p["listen"].startswith("0.0.0.0:"), p
    registry = load_registry_file(DEPLOY / "config" / "registry.yaml")
    replicas = len(registry.replicas)
    expected = {topology.EDGE_BACKEND, topology.BACKEND_REDIS, topology.EDGE_REDIS}
    expected |= {topology.backend_inference(i) for i in range(replicas)}
    assert {p["name"] for p in proxies} == expected
    assert len({_hostport(p["listen"])[1] for p in proxies}) == len(proxies), "listen ports must differ"

    for profile in PROFILES:
        services = active(compose, profile)
        tname, tsvc = resolve(services, "toxiproxy")
        through = functools.partial(_through, services)
        edge_env = services["edge"]["environment"]
        backend_env = services["backend"]["environment"]
        # edge -> edge_backend -> backend's gRPC port
        up, svc, port = through(topology.EDGE_BACKEND, _hostport(edge_env["AFTERSHOCK_EDGE_BACKEND_TARGET"]))
        assert command_service(svc) == "backend" and port == listen_port("backend", svc)
        # backend -> backend_redis -> redis; edge -> edge_redis -> redis
        up, svc, port = through(
            topology.BACKEND_REDIS, _redis_hostport(backend_env["AFTERSHOCK_BACKEND_REDIS_URL"])
        )
        assert up == "redis" and port == 6379
        up, svc, port = through(topology.EDGE_REDIS, _redis_hostport(edge_env["AFTERSHOCK_EDGE_REDIS_URL"]))
        assert up == "redis" and port == 6379
        # backend -> backend_inference_<i> -> the replica the registry names inference-<i>
        for i, replica in enumerate(registry.replicas):
            up, svc, port = through(topology.backend_inference(i), _hostport(replica.address))
            assert command_service(svc) == "inference", (profile, replica)
            assert replica.name == f"inference-{i}", "backend_inference_<i> fronts inference-<i>"
            assert svc["environment"]["AFTERSHOCK_INFERENCE_REPLICA_NAME"] == replica.name, (profile, up)
            assert port == listen_port("inference", svc), (profile, up)
        # The backend reads the registry the compose file mounts.
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services["backend"]["volumes"]}
        assert mounts[backend_env["AFTERSHOCK_BACKEND_REGISTRY_FILE"]] == "./config/registry.yaml"
        assert tname == "toxiproxy" and "-config=/config/toxiproxy.json" in tsvc["command"]


def test_models_served_match_the_registry(compose: dict[str, Any]) -> None:
    registry = load_registry_file(DEPLOY / "config" / "registry.yaml")
    routed = {m.name for m in registry.models}
    for profile in PROFILES:
        served: set[str] = set()
        for svc in active(compose, profile).values():
            env = svc.get("environment") or {}
            if command_service(svc) != "inference":
                continue
            if env.get("AFTERSHOCK_INFERENCE_ENGINE", _default("inference", "engine")) == "sim":
                models_file = env["AFTERSHOCK_INFERENCE_MODELS_FILE"]
                mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
                host_file = DEPLOY / mounts[models_file]
                names = {m.name for m in InferenceSettings(models_file=host_file).resolved_sim_models()}
            else:
                names = {env["AFTERSHOCK_INFERENCE_VLLM_SERVED_MODEL_NAME"]}
            served = names if not served else served & names
        if profile == "sim":
            assert served == routed, "the sim profile serves every routed model"
        else:
            assert served and served <= routed, "the gpu profile's model must be routed"
    # The drills' models run unchanged against `--profile sim`.
    sim_models = {
        m.name for m in InferenceSettings(models_file=DEPLOY / "config" / "models.yaml").resolved_sim_models()
    }
    drill_models = {Load().model} | {
        load_drill(p).load.model for p in sorted((ROOT / "chaos").glob("*.yaml")) if p.name != "models.yaml"
    }
    assert drill_models <= sim_models


def test_prometheus_scrapes_every_service_on_its_metrics_port(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    for profile in PROFILES:
        services = active(compose, profile)
        scraped: dict[str, list[str]] = {}
        for job in config["scrape_configs"]:
            for static in job["static_configs"]:
                for target in static["targets"]:
                    host, port = _hostport(target)
                    if host == "localhost":
                        continue
                    name, svc = resolve(services, host)
                    service = command_service(svc)
                    if service is not None:
                        assert port == effective(service, svc["environment"], "metrics_port"), (job, target)
                        scraped.setdefault(service, []).append(name)
                    elif name == "toxiproxy":
                        assert port == listen_port("toxiproxy", svc) and "-proxy-metrics" in svc["command"]
                        scraped.setdefault("toxiproxy", []).append(name)
        for name, svc in services.items():
            service = command_service(svc)
            if service is not None:
                assert name in scraped.get(service, []), f"{profile}: {name} is not scraped"
        assert "toxiproxy" in scraped


def _alert_job_matchers() -> list[str]:
    matchers = []
    for path in sorted((ROOT / "alerts").glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                matchers += re.findall(r'job\s*=~\s*"([^"]+)"', rule["expr"])
                assert not re.search(r'job\s*(=|!=|!~)\s*"', rule["expr"].replace("=~", "")), rule["expr"]
    assert matchers, "alerts/ should match scrape jobs by name"
    return matchers


def _check_job_names(jobs: dict[str, str | None]) -> None:
    """jobs: job name -> the Aftershock service it scrapes (None: not an Aftershock service)."""
    for regex in _alert_job_matchers():
        meant = {s for s in ("edge", "backend", "inference") if s in regex}
        for job, service in jobs.items():
            matches = re.fullmatch(regex, job) is not None
            assert matches == (service in meant), f"job {job!r} ({service}) vs alert matcher job=~{regex!r}"


def test_scrape_job_names_match_the_alerts(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    services = active(compose, "sim")
    jobs: dict[str, str | None] = {}
    for job in config["scrape_configs"]:
        kinds = set()
        for static in job["static_configs"]:
            for target in static["targets"]:
                host = _hostport(target)[0]
                kinds.add(None if host == "localhost" else command_service(resolve(services, host)[1]))
        assert len(kinds) == 1, f"job {job['job_name']} mixes services"
        jobs[job["job_name"]] = kinds.pop()
    _check_job_names(jobs)


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


def test_grafana_is_provisioned_with_the_dashboards(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana:11.6."), "dashboards are built for Grafana 11.6"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    provider = yaml.safe_load((ROOT / "dashboards/provisioning/dashboards/dashboards.yaml").read_text())
    assert mounts["/etc/grafana/provisioning"] == "../dashboards/provisioning"
    assert mounts[provider["providers"][0]["options"]["path"]] == "../dashboards/json"
    assert grafana["env_file"] == "../dashboards/grafana.env"
    env = dict(
        line.split("=", 1)
        for line in (ROOT / "dashboards/grafana.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    services = compose["services"]
    for url, port in ((env["AFTERSHOCK_PROMETHEUS_URL"], "9090"), (env["AFTERSHOCK_JAEGER_URL"], "16686")):
        host = url.split("//")[1].split(":")[0]
        assert host in services and url.endswith(":" + port), url


def test_prometheus_loads_every_alert_file(compose: dict[str, Any]) -> None:
    prom = compose["services"]["prometheus"]
    config_path = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"]}
    assert mounts[config_path] == "./prometheus/prometheus.yml"
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (rule_glob,) = config["rule_files"]
    rules_dir = str(Path(config_path).parent / Path(rule_glob).parent)
    assert mounts[rules_dir] == "../alerts" and Path(rule_glob).name == "*.rules.yml"
    assert "--enable-feature=exemplar-storage" in prom["command"]


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
    used = {m.group(1) for m in _VAR.finditer(COMPOSE.read_text())}
    assert used == set(env_example())


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    version = _project_version()
    for name, svc in compose["services"].items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
        if repo in ("aftershock", "aftershock-gpu"):
            assert tag == version, f"{name}: {image} should be tagged with the project version {version}"
    assert env_example()["AFTERSHOCK_VERSION"] == version
    gpu = (DEPLOY / "Dockerfile.gpu").read_text()
    assert f"ARG VLLM_VERSION={env_example()['VLLM_VERSION']}" in gpu


def _project_version() -> str:
    m = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert m
    return m.group(1)


# -- Dockerfiles and the healthcheck ------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile(dockerfile: str) -> None:
    text = (DEPLOY / dockerfile).read_text()
    lines = [line for line in text.replace("\\\n", " ").splitlines() if line and not line.startswith("#")]
    for line in lines:
        if line.startswith("ARG") and "_IMAGE=" in line:
            image = line.split("=", 1)[1]
            assert re.search(r":\d[\w.-]*$", image), f"{dockerfile}: base image {image} is not pinned"
        if line.startswith("COPY") and "--from=" not in line:
            sources = [a for a in line.split()[1:-1] if not a.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), f"{dockerfile}: COPY {src}: no such path in the repository"
                ignore = (DEPLOY / f"{dockerfile}.dockerignore").read_text().split()
                assert f"!{src}" in ignore or f"!{src}/" in ignore, (
                    f"{dockerfile}.dockerignore leaves out {src}"
                )
    users = [line.split()[1] for line in lines if line.startswith("USER")]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image must run as non-root"
    assert any(line.startswith("HEALTHCHECK") and "aftershock-healthcheck" in line for line in lines)
    assert re.search(r"pip install -c requirements/constraints\.txt", text)
    assert 'ENTRYPOINT ["aftershock"]' in text
    if dockerfile == "Dockerfile.gpu":
        assert '".[vllm]"' in text


def test_healthcheck_defaults_match_the_services() -> None:
    assert set(healthcheck.DEFAULT_PORTS) == set(SETTINGS)
    for service, port in healthcheck.DEFAULT_PORTS.items():
        assert port == _default(service, "port"), service
    assert healthcheck.GRPC_HEALTH_SERVICES == GRPC_SERVICES
    assert set(healthcheck.HTTP_PATHS) | set(healthcheck.GRPC_HEALTH_SERVICES) == set(SETTINGS)


def test_healthcheck_finds_the_service_and_its_address() -> None:
    hc = healthcheck
    assert (
        hc.service_from_command(["/opt/venv/bin/python", "/opt/venv/bin/aftershock", "backend"]) == "backend"
    )
    assert hc.service_from_command(["/sbin/docker-init", "--", "aftershock", "edge", "--port", "9"]) == "edge"
    assert hc.service_from_command(["python", "-m", "aftershock", "inference"]) == "inference"
    assert hc.service_from_command(["redis-server"]) is None
    assert hc.address("edge", [], {}) == ("127.0.0.1", 8000)
    assert hc.address("edge", [], {"AFTERSHOCK_EDGE_HOST": "0.0.0.0", "AFTERSHOCK_EDGE_PORT": "8080"}) == (
        "127.0.0.1",
        8080,
    )
    assert hc.address("backend", ["aftershock", "backend", "--port=1234", "--host", "::"], {}) == (
        "::1",
        1234,
    )
    assert hc.address("inference", [], {"AFTERSHOCK_INFERENCE_HOST": "10.1.2.3"}) == ("10.1.2.3", 50051)


@pytest.fixture
def http_server() -> Iterator[tuple[int, dict[str, int]]]:
    status = {"/healthz": 200, "/version": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], status
    server.shutdown()
    server.server_close()


def test_healthcheck_http(http_server: tuple[int, dict[str, int]]) -> None:
    port, status = http_server
    assert healthcheck.check("edge", "127.0.0.1", port, 2.0) is None
    assert healthcheck.check("toxiproxy", "127.0.0.1", port, 2.0) is None
    status["/healthz"] = 503
    assert "503" in (healthcheck.check("edge", "127.0.0.1", port, 2.0) or "")
    assert healthcheck.check("edge", "127.0.0.1", free_port(), 1.0) is not None


def test_healthcheck_grpc() -> None:
    server = grpc.server(thread_pool=__import__("concurrent.futures").futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set(GRPC_SERVICES["backend"], health_pb2.HealthCheckResponse.SERVING)
        servicer.set(GRPC_SERVICES["inference"], health_pb2.HealthCheckResponse.NOT_SERVING)
        assert healthcheck.check("backend", "127.0.0.1", port, 2.0) is None
        assert "NOT_SERVING" in (healthcheck.check("inference", "127.0.0.1", port, 2.0) or "")
    finally:
        server.stop(None)
    assert healthcheck.check("backend", "127.0.0.1", free_port(), 1.0) is not None


# -- Prometheus and Alertmanager configs ----------------------------------------------------------------


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    # As in the container: the config beside alerts/, so promtool also checks every rule file.
    shutil.copy(DEPLOY / "prometheus" / "prometheus.yml", tmp_path / "prometheus.yml")
    (tmp_path / "alerts").symlink_to(ROOT / "alerts")
    result = _run([_tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")])
    assert result.returncode == 0, _output(result)
    count = len(list((ROOT / "alerts").glob("*.rules.yml")))
    assert f"{count} rule files found" in result.stdout, _output(result)


def test_amtool_accepts_the_alertmanager_config() -> None:
    result = _run([_tool("amtool"), "check-config", str(DEPLOY / "prometheus" / "alertmanager.yml")])
    assert result.returncode == 0, _output(result)
    config = yaml.safe_load((DEPLOY / "prometheus" / "alertmanager.yml").read_text())
    routed = {m for r in config["route"]["routes"] for m in r["matchers"]}
    severities = set()
    for path in (ROOT / "alerts").glob("*.rules.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            severities |= {r["labels"]["severity"] for r in group["rules"] if "alert" in r}
    assert {f'severity="{s}"' for s in severities} <= routed


# -- Kubernetes ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    kubectl = _tool("kubectl")
    out = {}
    for name, path in KUSTOMIZATIONS.items():
        result = _run([kubectl, "kustomize", str(path)])
        assert result.returncode == 0, _output(result)
        out[name] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return out


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                yield d, c


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
def test_kubernetes_objects_are_valid(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Every object against the Kubernetes schemas (strict: unknown fields fail); the Prometheus
    Operator's custom resources, which have no schema there, structurally."""
    docs = rendered[overlay]
    crds = []
    for d in docs:
        try:
            kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            crds.append(d)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {d['kind']}/{d['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert sorted({(d["apiVersion"], d["kind"]) for d in crds}) == [
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ]
    services = _by_kind(docs, "Service")
    for monitor in _by_kind(docs, "ServiceMonitor").values():
        selector = monitor["spec"]["selector"]["matchLabels"]
        selected = [s for s in services.values() if selector.items() <= s["metadata"]["labels"].items()]
        assert {s["metadata"]["name"] for s in selected} == {
            "aftershock-edge",
            "aftershock-backend",
            "aftershock-inference",
        }
        for endpoint in monitor["spec"]["endpoints"]:
            for s in selected:
                assert endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}, (
                    s["metadata"]["name"],
                    endpoint,
                )
    groups = [g for r in _by_kind(docs, "PrometheusRule").values() for g in r["spec"]["groups"]]
    assert len({g["name"] for g in groups}) == len(groups), "rule group names must be unique"


def test_prometheus_rules_pass_promtool(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    for rule in _by_kind(rendered["staging"], "PrometheusRule").values():
        path = tmp_path / f"{rule['metadata']['name']}.yml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        result = _run([_tool("promtool"), "check", "rules", str(path)])
        assert result.returncode == 0, _output(result)


def test_generated_kubernetes_files_are_current() -> None:
    stale = [str(p.relative_to(ROOT)) for p in generate.stale_files()]
    assert not stale, f"stale: {stale}; run: python deploy/k8s/generate.py"
    rules = list(yaml.safe_load_all((K8S / "base/generated/prometheusrules.yaml").read_text()))
    assert {r["metadata"]["annotations"]["aftershock/source"] for r in rules} == {
        f"alerts/{p.name}" for p in (ROOT / "alerts").glob("*.rules.yml")
    }


@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
def test_kubernetes_containers_match_the_code(
    overlay: str, rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[overlay]
    version = _project_version()
    seen = set()
    for workload, c in _containers(docs):
        service = c["args"][0]
        seen.add(service)
        _parser().parse_args(list(c["args"]))
        env = _env(c)
        for var in env:
            if var.startswith("AFTERSHOCK_"):
                assert _env_field(service, var), (
                    f"{overlay}: {var} is not a {SETTINGS[service].__name__} field"
                )
            else:
                assert FOREIGN_ENV.match(var), f"{overlay}: unexpected variable {var}"
        literal = {k: v for k, v in env.items() if isinstance(v, str)}
        settings = settings_from_env(service, literal, monkeypatch)
        assert settings.host == "0.0.0.0"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        main = "http" if service == "edge" else "grpc"
        assert ports == {main: settings.port, "metrics": settings.metrics_port}, (overlay, service)
        name, _, tag = c["image"].rpartition(":")
        assert tag == version and name.split("/")[-1] in ("aftershock", "aftershock-gpu"), c["image"]
        # Probes: gRPC health for gRPC services, HTTP /readyz and /healthz for the edge.
        if service == "edge":
            assert settings.auth_config().enabled, f"{overlay}: the edge must require API keys"
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        else:
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe in c:
                    assert c[probe]["grpc"]["port"] == settings.port
                    assert c[probe]["grpc"].get("service", "") in ("", GRPC_SERVICES[service]), probe
            assert c["readinessProbe"]["grpc"]["service"] == GRPC_SERVICES[service]
        assert "requests" in c["resources"] and "limits" in c["resources"], (overlay, service)
        pod = workload["spec"]["template"]["spec"]
        if service == "inference" and overlay != "sim":
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and pod["nodeSelector"], overlay
            assert c["image"].rpartition(":")[0].endswith("aftershock-gpu")
            assert literal["AFTERSHOCK_INFERENCE_ENGINE"] == "vllm"
        if service == "inference" and overlay == "sim":
            assert "nvidia.com/gpu" not in c["resources"]["limits"] and not pod.get("nodeSelector")
            assert literal["AFTERSHOCK_INFERENCE_ENGINE"] == "sim"
    assert seen == {"edge", "backend", "inference"}


@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
def test_kubernetes_wiring(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Services select pods and name their ports; the edge dials the backend Service; the registry
    names the inference pods by their stable DNS names; ConfigMaps exist; Secrets are only referenced;
    PDBs and HPAs point at workloads; scrape jobs (Service names) match the alerts."""
    docs = rendered[overlay]
    services = _by_kind(docs, "Service")
    workloads = {**_by_kind(docs, "Deployment"), **_by_kind(docs, "StatefulSet")}
    config_maps = _by_kind(docs, "ConfigMap")
    assert not _by_kind(docs, "Secret"), "secrets are never committed"
    service_of: dict[str, str] = {}
    for name, svc in services.items():
        (workload,) = [
            w
            for w in workloads.values()
            if svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        names = {p["name"] for p in container["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names, (name, port)
        service_of[name] = container["args"][0]
    _check_job_names(dict(service_of))  # ServiceMonitor job label = Service name

    (edge,) = [c for _, c in _containers(docs) if c["args"][0] == "edge"]
    host, port = _hostport(_env(edge)["AFTERSHOCK_EDGE_BACKEND_TARGET"])
    backend_svc = services[host]
    assert service_of[host] == "backend" and port in {p["port"] for p in backend_svc["spec"]["ports"]}

    inference = _by_kind(docs, "StatefulSet")["aftershock-inference"]
    headless = services[inference["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    (grpc_port,) = [p["port"] for p in headless["spec"]["ports"] if p["name"] == "grpc"]
    registry = yaml.safe_load(config_maps["aftershock-registry"]["data"]["registry.yaml"])
    pods = [f"aftershock-inference-{i}" for i in range(inference["spec"]["replicas"])]
    assert [r["name"] for r in registry["replicas"]] == pods
    assert [r["address"] for r in registry["replicas"]] == [
        f"{p}.{headless['metadata']['name']}:{grpc_port}" for p in pods
    ]
    (inf,) = inference["spec"]["template"]["spec"]["containers"]
    assert _env(inf)["AFTERSHOCK_INFERENCE_REPLICA_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    routed = {m["name"] for m in registry["models"]}
    env = _env(inf)
    if env["AFTERSHOCK_INFERENCE_ENGINE"] == "vllm":
        assert routed == {env["AFTERSHOCK_INFERENCE_VLLM_SERVED_MODEL_NAME"]}
    else:
        models = yaml.safe_load(config_maps[_models_cm(config_maps)]["data"]["models.yaml"])
        assert routed == {m["name"] for m in models["models"]}

    # Every ConfigMap a pod uses exists; every Secret is one of the documented, uncommitted ones.
    for workload in workloads.values():
        pod = workload["spec"]["template"]["spec"]
        for c in pod["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in SECRETS_REFERENCED, ref
            for src in c.get("envFrom", []):
                assert src["configMapRef"]["name"] in config_maps
        for v in pod.get("volumes", []):
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps, v
            if "secret" in v:
                assert v["secret"]["secretName"] in SECRETS_REFERENCED, v
    for pdb in _by_kind(docs, "PodDisruptionBudget").values():
        assert any(
            pdb["spec"]["selector"]["matchLabels"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
            for w in workloads.values()
        ), pdb["metadata"]["name"]
    hpas = {h["spec"]["scaleTargetRef"]["name"] for h in _by_kind(docs, "HorizontalPodAutoscaler").values()}
    assert hpas == {"aftershock-edge", "aftershock-backend"}
    for name in hpas:
        assert "replicas" not in workloads[name]["spec"], f"{name}: the HPA owns the replica count"


def _models_cm(config_maps: dict[str, dict[str, Any]]) -> str:
    (name,) = [n for n in config_maps if n.startswith("aftershock-models")]
    return name


def test_kubernetes_sim_models_are_the_staging_stacks() -> None:
    a = yaml.safe_load((K8S / "base/config/models.yaml").read_text())
    b = yaml.safe_load((DEPLOY / "config/models.yaml").read_text())
    assert a == b
