"""The rendered kustomizations validate against the Kubernetes schemas; generated files are current."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.support import (
    K8S,
    KUBERNETES_VERSION,
    KUSTOMIZATIONS,
    ROOT,
    by_kind,
    cmd_output,
    generate,
    run_cmd,
    tool,
)


@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
def test_kubernetes_objects_are_valid(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Every object against the Kubernetes schemas (strict: unknown fields fail); the Prometheus
    Operator's custom resources, which have no schema there, structurally."""
    docs = rendered[overlay]
    crds = []
    validated = set()
    for d in docs:
        # The oldest release supported and the newest kubernetes-validate knows.
        for version in (KUBERNETES_VERSION, kubernetes_validate.utils.latest_version()):
            try:
                kubernetes_validate.validate(d, version, strict=True)
                validated.add(d["kind"])
            except kubernetes_validate.SchemaNotFoundError:
                crds.append(d)
            except kubernetes_validate.ValidationError as exc:
                name = f"{d['kind']}/{d['metadata']['name']}"
                pytest.fail(f"{overlay} on {version}: {name}: {exc.message} at {list(exc.path)}")
    assert {"NetworkPolicy", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Deployment"} <= validated
    assert sorted({(d["apiVersion"], d["kind"]) for d in crds}) == [
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ]
    services = by_kind(docs, "Service")
    # Every Service with a `metrics` port is scraped by a ServiceMonitor on that port.
    scraped = set()
    for monitor in by_kind(docs, "ServiceMonitor").values():
        selector = monitor["spec"]["selector"]["matchLabels"]
        for s in services.values():
            if selector.items() <= s["metadata"]["labels"].items():
                ports = {p["name"] for p in s["spec"]["ports"]}
                scraped |= {
                    (s["metadata"]["name"], e["port"])
                    for e in monitor["spec"]["endpoints"]
                    if e["port"] in ports
                }
    expected = {
        ("aftershock-edge", "metrics"),
        ("aftershock-backend", "metrics"),
        ("aftershock-inference", "metrics"),
    }
    if overlay == "staging":  # the exporter's gauges, and Toxiproxy's own byte counters on its API port
        expected |= {("aftershock-toxiproxy", "metrics"), ("aftershock-toxiproxy", "api")}
    assert scraped == expected
    groups = [g for r in by_kind(docs, "PrometheusRule").values() for g in r["spec"]["groups"]]
    assert len({g["name"] for g in groups}) == len(groups), "rule group names must be unique"


def test_prometheus_rules_pass_promtool(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    for rule in by_kind(rendered["staging"], "PrometheusRule").values():
        path = tmp_path / f"{rule['metadata']['name']}.yml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        result = run_cmd([tool("promtool"), "check", "rules", str(path)])
        assert result.returncode == 0, cmd_output(result)


def test_generated_kubernetes_files_are_current() -> None:
    stale = [str(p.relative_to(ROOT)) for p in generate.stale_files()]
    assert not stale, f"stale: {stale}; run: python deploy/k8s/generate.py"
    rules = list(yaml.safe_load_all((K8S / "base/generated/prometheusrules.yaml").read_text()))
    assert {r["metadata"]["annotations"]["aftershock/source"] for r in rules} == {
        f"alerts/{p.name}" for p in (ROOT / "alerts").glob("*.rules.yml")
    }


@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
def test_grafana_on_kubernetes_gets_composes_datasources(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """The same Prometheus (exemplars linked to the Jaeger datasource) and Jaeger as compose, for
    Grafana's datasource sidecar; Jaeger's URL in the namespace the traces are sent to."""
    docs = rendered[overlay]
    (cm,) = [
        c for c in by_kind(docs, "ConfigMap").values() if c["metadata"]["labels"].get("grafana_datasource")
    ]
    (text,) = cm["data"].values()
    k8s = yaml.safe_load(text)["datasources"]
    compose = yaml.safe_load((ROOT / "dashboards/provisioning/datasources/datasources.yaml").read_text())
    strip = [{k: v for k, v in ds.items() if k != "url"} for ds in compose["datasources"]]
    assert [{k: v for k, v in ds.items() if k != "url"} for ds in k8s] == strip
    by_uid = {ds["uid"]: ds for ds in k8s}
    (link,) = by_uid["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert by_uid[link["datasourceUid"]]["type"] == "jaeger"
    otlp = by_kind(docs, "ConfigMap")
    (telemetry,) = [c for n, c in otlp.items() if n.startswith("aftershock-telemetry")]
    collector_ns = telemetry["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"].split(".")[1]
    assert by_uid["jaeger"]["url"].split("//")[1].split(".")[1] == collector_ns
    assert all(ds["url"].startswith("http://") for ds in k8s)


def test_the_schemas_catch_a_broken_network_policy_and_hpa(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = copy.deepcopy(rendered["staging"])
    policy = by_kind(docs, "NetworkPolicy")["aftershock-backend"]
    policy["spec"]["ingres"] = policy["spec"].pop("ingress")  # a typo strict validation must reject
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["aftershock-edge"]
    hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] = {"requests": 256}
    for version in (KUBERNETES_VERSION, kubernetes_validate.utils.latest_version()):
        for broken in (policy, hpa):
            with pytest.raises(kubernetes_validate.ValidationError):
                kubernetes_validate.validate(broken, version, strict=True)
