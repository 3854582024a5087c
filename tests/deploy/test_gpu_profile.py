"""The GPU profile of deploy/: vLLM replicas that start one after the other on a shared GPU, keep
their weights across restarts, run batch invariant (so they declare themselves reproducible) and
send no usage statistics anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# vLLM reads VLLM_DO_NOT_TRACK or DO_NOT_TRACK; the image adds DO_NOT_TRACK for the Hugging Face hub.
QUIET = {"VLLM_NO_USAGE_STATS": "1", "VLLM_DO_NOT_TRACK": "1"}
IMAGE_QUIET = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
HF_HOME = "/home/aftershock/.cache/huggingface"


def compose_gpu_services() -> dict[str, Any]:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return {name: svc for name, svc in doc["services"].items() if "gpu" in svc.get("profiles", ())}


def test_compose_starts_the_second_replica_once_the_first_is_healthy() -> None:
    services = compose_gpu_services()
    assert set(services) == {"inference-0", "inference-1"}
    assert services["inference-1"]["depends_on"]["inference-0"] == {"condition": "service_healthy"}
    assert "inference-1" not in services["inference-0"].get("depends_on", {})


def test_compose_caches_weights_and_runs_quiet_and_batch_invariant() -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, svc in compose_gpu_services().items():
        assert f"hf-cache:{HF_HOME}" in svc["volumes"], name
        env = svc["environment"]
        assert {k: str(env.get(k)) for k in QUIET} == QUIET, name
        assert str(env["VLLM_BATCH_INVARIANT"]) == "1", name
    assert "hf-cache" in doc["volumes"]


def test_kubernetes_keeps_weights_on_a_claim_and_runs_quiet_and_batch_invariant() -> None:
    statefulset = next(yaml.safe_load_all((DEPLOY / "k8s/base/inference.yaml").read_text()))
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == HF_HOME
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_HOME"] == HF_HOME
    assert {k: env.get(k) for k in QUIET} == QUIET
    assert env["VLLM_BATCH_INVARIANT"] == "1"


def test_the_gpu_image_runs_quiet_by_default() -> None:
    text = (DEPLOY / "Dockerfile.gpu").read_text()
    for key, value in IMAGE_QUIET.items():
        assert f"{key}={value}" in text, key
