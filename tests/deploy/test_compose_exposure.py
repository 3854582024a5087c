"""What compose publishes and keeps: only the edge (which checks API keys) follows
AFTERSHOCK_BIND_ADDRESS, every unauthenticated port follows AFTERSHOCK_ADMIN_BIND_ADDRESS with a
warning in the config and the docs; hot-reloaded files are mounted as folders; Alertmanager's
silences survive restarts; images are on releases without the known critical CVEs."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
import yaml

from tests.deploy.support import COMPOSE, DEPLOY, ENV_EXAMPLE, interpolate, stack_env

PUBLIC = "AFTERSHOCK_BIND_ADDRESS"
ADMIN = "AFTERSHOCK_ADMIN_BIND_ADDRESS"
# Fixed releases for CVE-2025-49844 per release line (Redis' advisory, October 2025).
REDIS_FIXED = {(8, 2): 2, (8, 0): 4, (7, 4): 6, (7, 2): 11, (6, 2): 20}


def raw_compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def published(services: dict[str, Any], env: dict[str, str]) -> dict[str, list[str]]:
    """Service -> host addresses its ports are published on, given the .env values."""
    out: dict[str, list[str]] = {}
    for name, svc in services.items():
        for port in svc.get("ports", []):
            out.setdefault(name, []).append(interpolate(str(port), env).rsplit(":", 2)[0])
    return out


def check_only_the_edge_is_public(services: dict[str, Any]) -> None:
    env = {**stack_env(), PUBLIC: "0.0.0.0"}
    for name, addresses in published(services, env).items():
        for address in addresses:
            if name == "edge":
                assert address == "0.0.0.0", name
            else:
                assert address == "127.0.0.1", f"{name} is published on {address} with {PUBLIC}=0.0.0.0"
    env = {**stack_env(), ADMIN: "192.0.2.1"}
    admin = {n for n, addrs in published(services, env).items() if "192.0.2.1" in addrs}
    assert {"toxiproxy", "prometheus", "alertmanager", "grafana"} <= admin


def test_only_the_edge_follows_the_public_bind_address() -> None:
    check_only_the_edge_is_public(raw_compose()["services"])


def test_a_public_toxiproxy_api_fails_the_check() -> None:
    services = copy.deepcopy(raw_compose()["services"])
    services["toxiproxy"]["ports"] = ["${AFTERSHOCK_BIND_ADDRESS:-127.0.0.1}:8474:8474"]
    with pytest.raises(AssertionError, match=r"toxiproxy is published on 0\.0\.0\.0"):
        check_only_the_edge_is_public(services)


def test_publishing_the_admin_ports_is_warned_about_in_config_and_docs() -> None:
    for path in (COMPOSE, ENV_EXAMPLE, DEPLOY / "README.md"):
        text = path.read_text()
        near = [text[max(0, m.start() - 400) : m.end() + 400] for m in re.finditer("WARNING", text)]
        assert any(ADMIN in window for window in near), f"{path}: no WARNING next to {ADMIN}"
    compose = COMPOSE.read_text()
    for what in ("Toxiproxy API", "POST /-/quit", "anonymous"):
        assert what in compose, what


def test_hot_reloaded_files_are_mounted_as_folders() -> None:
    services = raw_compose()["services"]
    reloaded = {
        "backend": services["backend"]["environment"]["AFTERSHOCK_BACKEND_REGISTRY_FILE"],
        "prometheus": next(
            a.split("=", 1)[1] for a in services["prometheus"]["command"] if "config.file" in a
        ),
        "alertmanager": next(
            a.split("=", 1)[1] for a in services["alertmanager"]["command"] if "config.file" in a
        ),
    }
    for name, path in reloaded.items():
        targets = [v.split(":")[1] for v in services[name]["volumes"]]
        assert path not in targets, f"{name}: {path} is a single-file bind mount"
        assert any(path.startswith(t.rstrip("/") + "/") for t in targets), f"{name}: {path} is not mounted"


def test_alertmanager_keeps_silences_across_restarts() -> None:
    raw = raw_compose()
    am = raw["services"]["alertmanager"]
    storage = next(a.split("=", 1)[1] for a in am["command"] if a.startswith("--storage.path="))
    volumes = {v.split(":")[1]: v.split(":")[0] for v in am["volumes"]}
    assert volumes.get(storage) in raw["volumes"], "Alertmanager's data dir must be a named volume"


def _redis_ok(image: str) -> bool:
    m = re.fullmatch(r"redis:(\d+)\.(\d+)\.(\d+)(-\w+)?", image)
    assert m, image
    major, minor, patch = (int(g) for g in m.groups()[:3])
    return ((major, minor) in REDIS_FIXED and patch >= REDIS_FIXED[(major, minor)]) or (major, minor) > (8, 2)


def test_images_are_on_fixed_releases(rendered: dict[str, list[dict[str, Any]]]) -> None:
    services = raw_compose()["services"]
    assert _redis_ok(services["redis"]["image"]), services["redis"]["image"]
    assert not _redis_ok("redis:7.4.5-alpine")  # the release the issue found
    prometheus = re.fullmatch(r"prom/prometheus:v(\d+)\.\d+\.\d+", services["prometheus"]["image"])
    assert prometheus and int(prometheus.group(1)) >= 3
    k8s = {
        c["image"]
        for d in rendered["staging"]
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert services["redis"]["image"] in k8s, "the same Redis in compose and on Kubernetes"
    assert services["toxiproxy"]["image"] in k8s, "the same Toxiproxy in compose and on Kubernetes"


def test_kubernetes_objects_fit_client_side_apply_too(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The README's reason for server-side apply is not size: every object, the dashboard ConfigMaps
    included, fits the 256 KiB annotation limit of client-side apply's last-applied-configuration."""
    for overlay, docs in rendered.items():
        for d in docs:
            assert len(json.dumps(d)) < 256 * 1024, (overlay, d["metadata"]["name"])
