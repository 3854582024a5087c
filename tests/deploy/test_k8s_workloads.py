"""Kubernetes workloads against the code: commands, settings, ports, probes and wiring."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from aftershock.cli import _parser
from aftershock.faultproxy.server import _parser as faultproxy_parser

from tests.deploy.support import (
    DEPLOY,
    FOREIGN_ENV,
    GRPC_SERVICES,
    K8S,
    KUSTOMIZATIONS,
    SECRETS_REFERENCED,
    SETTINGS,
    by_kind,
    check_job_names,
    container_env,
    containers_of,
    env_field,
    hostport,
    models_configmap,
    project_version,
    settings_from_env,
)


@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
def test_kubernetes_containers_match_the_code(
    overlay: str, rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[overlay]
    version = project_version()
    seen = set()
    for workload, c in containers_of(docs):
        if not c["image"].rpartition(":")[0].split("/")[-1].startswith("aftershock"):
            continue  # Redis, Toxiproxy
        service = c["args"][0]
        seen.add(service)
        if service == "faultproxy":  # parses its own flags
            faultproxy_parser().parse_args(list(c["args"][1:]))
        else:
            _parser().parse_args(list(c["args"]))
        env = container_env(c)
        for var in env:
            if var.startswith("AFTERSHOCK_"):
                assert env_field(service, var), (
                    f"{overlay}: {var} is not a {SETTINGS[service].__name__} field"
                )
            else:
                assert FOREIGN_ENV.match(var), f"{overlay}: unexpected variable {var}"
        literal = {k: v for k, v in env.items() if isinstance(v, str)}
        settings = settings_from_env(service, literal, monkeypatch)
        assert settings.host == "0.0.0.0"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        name, _, tag = c["image"].rpartition(":")
        assert tag == version and name.split("/")[-1] in ("aftershock", "aftershock-gpu"), c["image"]
        if service == "faultproxy":  # the exporter beside staging's Toxiproxy: /metrics only
            assert settings.export_api and ports == {"metrics": settings.metrics_port}, (overlay, ports)
            assert c["readinessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
            continue
        main = "http" if service == "edge" else "grpc"
        assert ports == {main: settings.port, "metrics": settings.metrics_port}, (overlay, service)
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
    assert seen == {"edge", "backend", "inference"} | ({"faultproxy"} if overlay == "staging" else set())


@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
def test_kubernetes_wiring(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Services select pods and name their ports; the edge dials the backend Service; the registry
    names the inference pods by their stable DNS names; ConfigMaps exist; Secrets are only referenced;
    PDBs and HPAs point at workloads; scrape jobs (Service names) match the alerts."""
    docs = rendered[overlay]
    services = by_kind(docs, "Service")
    workloads = {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}
    config_maps = by_kind(docs, "ConfigMap")
    assert not by_kind(docs, "Secret"), "secrets are never committed"
    service_of: dict[str, str] = {}
    for name, svc in services.items():
        (workload,) = [
            w
            for w in workloads.values()
            if svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        containers = workload["spec"]["template"]["spec"]["containers"]
        names = {p["name"] for c in containers for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names, (name, port)
        # The Aftershock command it runs, else its component (redis, toxiproxy).
        first = containers[0]
        aftershock = first["image"].rpartition(":")[0].split("/")[-1].startswith("aftershock")
        service_of[name] = (
            first["args"][0] if aftershock else workload["metadata"]["labels"]["app.kubernetes.io/component"]
        )
    check_job_names(dict(service_of))  # ServiceMonitor job label = Service name

    (edge,) = [c for _, c in containers_of(docs) if c["args"][0] == "edge"]
    host, port = hostport(container_env(edge)["AFTERSHOCK_EDGE_BACKEND_TARGET"])
    backend_svc = services[host]
    # Staging dials Toxiproxy instead (test_k8s_network follows each hop through it).
    assert service_of[host] == ("toxiproxy" if overlay == "staging" else "backend")
    assert port in {p["port"] for p in backend_svc["spec"]["ports"]}

    inference = by_kind(docs, "StatefulSet")["aftershock-inference"]
    headless = services[inference["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    (grpc_port,) = [p["port"] for p in headless["spec"]["ports"] if p["name"] == "grpc"]
    registry = yaml.safe_load(config_maps["aftershock-registry"]["data"]["registry.yaml"])
    pods = [f"aftershock-inference-{i}" for i in range(inference["spec"]["replicas"])]
    assert [r["name"] for r in registry["replicas"]] == pods
    if overlay != "staging":  # staging: through Toxiproxy (test_k8s_network)
        assert [r["address"] for r in registry["replicas"]] == [
            f"{p}.{headless['metadata']['name']}:{grpc_port}" for p in pods
        ]
    (inf,) = inference["spec"]["template"]["spec"]["containers"]
    assert container_env(inf)["AFTERSHOCK_INFERENCE_REPLICA_NAME"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }
    routed = {m["name"] for m in registry["models"]}
    env = container_env(inf)
    if env["AFTERSHOCK_INFERENCE_ENGINE"] == "vllm":
        assert routed == {env["AFTERSHOCK_INFERENCE_VLLM_SERVED_MODEL_NAME"]}
    else:
        models = yaml.safe_load(config_maps[models_configmap(config_maps)]["data"]["models.yaml"])
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
    for pdb in by_kind(docs, "PodDisruptionBudget").values():
        assert any(
            pdb["spec"]["selector"]["matchLabels"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
            for w in workloads.values()
        ), pdb["metadata"]["name"]
    hpas = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind(docs, "HorizontalPodAutoscaler").values()}
    assert hpas == {"aftershock-edge", "aftershock-backend"}
    for name in hpas:
        assert "replicas" not in workloads[name]["spec"], f"{name}: the HPA owns the replica count"


def test_kubernetes_sim_models_are_the_staging_stacks() -> None:
    a = yaml.safe_load((K8S / "base/config/models.yaml").read_text())
    b = yaml.safe_load((DEPLOY / "config/models.yaml").read_text())
    assert a == b


def test_staging_routes_the_bases_models_through_toxiproxy() -> None:
    """overlays/staging/registry.yaml differs from the base's only in the replicas' addresses."""
    base = yaml.safe_load((K8S / "base/config/registry.yaml").read_text())
    staging = yaml.safe_load((K8S / "overlays/staging/registry.yaml").read_text())
    assert staging["models"] == base["models"]
    assert [r["name"] for r in staging["replicas"]] == [r["name"] for r in base["replicas"]]
