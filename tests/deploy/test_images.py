"""Images: compose tags pinned, Dockerfiles pinned, non-root, and copying only what exists."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy.support import (
    DEPLOY,
    ROOT,
    env_example,
    project_version,
)


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    version = project_version()
    for name, svc in compose["services"].items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
        if repo in ("aftershock", "aftershock-gpu"):
            assert tag == version, f"{name}: {image} should be tagged with the project version {version}"
    assert env_example()["AFTERSHOCK_VERSION"] == version
    gpu = (DEPLOY / "Dockerfile.gpu").read_text()
    assert f"ARG VLLM_VERSION={env_example()['VLLM_VERSION']}" in gpu


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
