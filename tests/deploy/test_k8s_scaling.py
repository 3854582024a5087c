"""Scaling and disruption on Kubernetes: the edge and backend HPAs scale on a load signal the
services export (served by the documented prometheus-adapter rules) before they shed, every scaled
workload has a PodDisruptionBudget that still lets a node drain, and each pod's drain (preStop
pause, then the service's own shutdown grace) fits in its terminationGracePeriodSeconds."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    K8S,
    KUSTOMIZATIONS,
    SETTINGS,
    by_kind,
    container_env,
    containers_of,
    setting_default,
)

# What the service must have left after its drain before the kubelet's SIGKILL: process exit,
# flushing traces and logs.
EXIT_MARGIN_S = 5.0
ADAPTER_RULES = K8S / "prometheus-adapter-rules.yaml"


def _setting(service: str, container: dict[str, Any], field: str) -> float:
    prefix = str(SETTINGS[service].model_config.get("env_prefix", ""))
    raw = container_env(container).get(prefix + field.upper())
    return float(raw if isinstance(raw, str) else setting_default(service, field))


def _workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}


def check_autoscaling(docs: list[dict[str, Any]], exposed: dict[str, set[str]]) -> None:
    adapter = {
        re.match(r"\w+", r["seriesQuery"]).group(0)  # type: ignore[union-attr]
        for r in yaml.safe_load(ADAPTER_RULES.read_text())["rules"]["custom"]
    }
    workloads = _workloads(docs)
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind(docs, "HorizontalPodAutoscaler").values()}
    assert set(hpas) == {"aftershock-edge", "aftershock-backend"}
    for name, hpa in hpas.items():
        (container,) = workloads[name]["spec"]["template"]["spec"]["containers"]
        service = container["args"][0]
        pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        assert pods, f"{name}: no load signal of the service's own"
        for metric in pods:
            series = metric["metric"]["name"]
            assert series in exposed, f"{name}: {series} is no metric aftershock.metrics defines"
            assert series in adapter, f"{name}: no prometheus-adapter rule serves {series}"
            target = float(metric["target"]["averageValue"])
            bound = _setting(service, container, "max_in_flight")
            assert 0 < target < bound, f"{name}: target {target} must be under the shed bound {bound}"
        assert hpa["spec"]["minReplicas"] >= 2, f"{name}: one pod cannot drain without an outage"
        (pdb,) = [
            p
            for p in by_kind(docs, "PodDisruptionBudget").values()
            if p["spec"]["selector"]["matchLabels"].items()
            <= workloads[name]["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert pdb["spec"].get("maxUnavailable") == 1, f"{name}: a drain takes one pod at a time"


def check_drain_fits(docs: list[dict[str, Any]]) -> None:
    for workload, c in containers_of(docs):
        if not c["image"].rpartition(":")[0].split("/")[-1].startswith("aftershock"):
            continue
        service = c["args"][0]
        if service not in ("edge", "backend", "inference"):
            continue
        pod = workload["spec"]["template"]["spec"]
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pause = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
        grace = _setting(service, c, "shutdown_grace_s")
        period = pod["terminationGracePeriodSeconds"]
        assert pause + grace + EXIT_MARGIN_S <= period, (
            f"{workload['metadata']['name']}: preStop {pause}s + drain {grace}s + {EXIT_MARGIN_S}s "
            f"exceeds terminationGracePeriodSeconds {period}"
        )


@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
def test_autoscaling_on_the_services_own_load_signal(
    overlay: str, rendered: dict[str, list[dict[str, Any]]], exposed: dict[str, set[str]]
) -> None:
    check_autoscaling(rendered[overlay], exposed)


@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
def test_graceful_drain_fits_in_the_termination_grace_period(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    check_drain_fits(rendered[overlay])


def _edge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(by_kind(docs, "Deployment")["aftershock-edge"]["spec"]["template"]["spec"]["containers"][0])


def test_a_drain_longer_than_the_grace_period_fails_the_check(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = copy.deepcopy(rendered["staging"])
    _edge(docs)["env"].append({"name": "AFTERSHOCK_EDGE_SHUTDOWN_GRACE_S", "value": "60"})
    with pytest.raises(AssertionError, match="exceeds terminationGracePeriodSeconds"):
        check_drain_fits(docs)


def test_an_hpa_on_a_metric_nobody_exports_fails_the_check(
    rendered: dict[str, list[dict[str, Any]]], exposed: dict[str, set[str]]
) -> None:
    docs = copy.deepcopy(rendered["staging"])
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["aftershock-backend"]
    hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] = "aftershock_requests_in_flight"
    with pytest.raises(AssertionError, match=r"no metric aftershock\.metrics defines"):
        check_autoscaling(docs, exposed)
    hpa["spec"]["metrics"] = [m for m in hpa["spec"]["metrics"] if m["type"] != "Pods"]
    with pytest.raises(AssertionError, match="no load signal"):
        check_autoscaling(docs, exposed)
