"""deploy/pin_digests.py: every third-party image reference is found and pinned correctly.

Resolving a digest needs the image registries, which these machines cannot reach; the resolver is
a plain function here (the registry's answer), and everything around it runs for real on the
committed deploy/ files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import yaml

from tests.stack_support import TESTS

DEPLOY = TESTS.parent / "deploy"


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pin_digests", DEPLOY / "pin_digests.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pin_digests = _tool()
FAKE = "sha256:" + "ab" * 32


def test_every_pulled_image_in_compose_is_found() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    pulled = {
        s["image"]
        for s in compose["services"].values()
        if "image" in s and not s["image"].startswith(pin_digests.OWN)
    }
    found = {m.group("ref") for m in pin_digests.references((DEPLOY / "compose.yaml").read_text())}
    assert pulled and found == pulled


def test_dockerfile_base_images_and_k8s_images_are_found() -> None:
    refs = {
        p.name: [m.group("ref") for m in pin_digests.references(p.read_text())] for p in pin_digests.files()
    }
    assert refs["Dockerfile"] == ["python:3.11.14-slim-bookworm"]
    assert refs["Dockerfile.gpu"][0].startswith("nvidia/cuda:")
    assert "redis.yaml" in refs and refs["redis.yaml"][0].startswith("redis:")


def test_registry_and_repository_of_each_kind_of_reference() -> None:
    assert pin_digests.split("redis:8.2.2-alpine") == (
        "registry-1.docker.io",
        "library/redis",
        "8.2.2-alpine",
    )
    assert pin_digests.split("prom/prometheus:v3.5.0") == (
        "registry-1.docker.io",
        "prom/prometheus",
        "v3.5.0",
    )
    assert pin_digests.split(f"ghcr.io/shopify/toxiproxy:2.12.0@{FAKE}") == (
        "ghcr.io",
        "shopify/toxiproxy",
        "2.12.0",
    )
    assert pin_digests.split("localhost:5000/x") == ("localhost:5000", "x", "latest")


def test_pinning_rewrites_third_party_images_once_and_leaves_ours(tmp_path: Path) -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    asked: list[str] = []

    def digest_of(ref: str) -> str:
        asked.append(ref)
        return FAKE

    pinned = pin_digests.pin(text, digest_of)
    assert "redis:8.2.2-alpine@" + FAKE in pinned
    assert "image: aftershock:${AFTERSHOCK_VERSION" in pinned  # built here, never pinned
    assert all("@" not in ref for ref in asked)  # asked by tag, never by an old digest
    again = pin_digests.pin(pinned, lambda ref: FAKE)
    assert again == pinned  # idempotent: a pinned reference is re-pinned, not doubled
    refs = [m.group("ref") for m in pin_digests.references(pinned)]
    assert refs and all(pin_digests.DIGEST.search(r) for r in refs)
    # The pinned file is still the same compose document apart from the image strings.
    assert yaml.safe_load(pinned).keys() == yaml.safe_load(text).keys()
