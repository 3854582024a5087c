"""Pin every third-party image in deploy/ by digest, so a moved tag cannot change what runs.

    python deploy/pin_digests.py            # list each image and whether it is pinned (exit 1: some not)
    python deploy/pin_digests.py --write    # resolve each tag's digest from its registry and pin it

Tags such as `redis:8.2.2-alpine` are rebuilt in place (base-image security updates), so the same
tag can mean different bytes on two nodes. `--write` asks the image's registry (Docker Hub, ghcr.io,
cr.jaegertracing.io, ...; the Docker Registry HTTP API v2, anonymous pull tokens) for the digest of
the tag's multi-platform index and rewrites `name:tag` as `name:tag@sha256:...` in compose.yaml, the
Kubernetes manifests and the Dockerfiles' base-image ARGs. It needs network access to those
registries, which the machines that build this project do not have: run it where they are reachable
(a release job, a workstation) and commit the result. Aftershock's own images are built, not
pulled, and are left alone.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
OWN = ("aftershock:", "aftershock-gpu:")
# `image: name:tag[@sha256:...]` in YAML, and `ARG X_IMAGE=name:tag[@sha256:...]` in Dockerfiles.
IMAGE = re.compile(r"(?P<lead>(?:^\s*image:\s*|^ARG \w+_IMAGE=))(?P<ref>[^\s\"'$]+)", re.M)
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
INDEX_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


def files() -> list[Path]:
    found = [DEPLOY / "compose.yaml", DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.gpu"]
    found += sorted(p for p in (DEPLOY / "k8s").rglob("*.yaml") if "generated" not in p.parts)
    return [p for p in found if p.exists()]


def references(text: str) -> Iterator[re.Match[str]]:
    for match in IMAGE.finditer(text):
        if not match.group("ref").startswith(OWN):
            yield match


def split(ref: str) -> tuple[str, str, str]:
    """(registry, repository, tag) of `ref` (digest dropped), Docker Hub's defaults filled in."""
    ref = DIGEST.sub("", ref)
    name, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "latest")
    first = name.split("/", 1)[0]
    if "." in first or ":" in first:
        registry, repository = first, name.split("/", 1)[1]
    else:
        registry, repository = "registry-1.docker.io", name if "/" in name else f"library/{name}"
    return registry, repository, tag


def registry_digest(ref: str) -> str:
    """The digest the registry serves for `ref`'s tag (anonymous pull token where one is needed)."""
    registry, repository, tag = split(ref)
    url = f"https://{registry}/v2/{repository}/manifests/{tag}"
    request = urllib.request.Request(url, method="HEAD", headers={"Accept": INDEX_TYPES})
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            return str(resp.headers["Docker-Content-Digest"])
    except urllib.error.HTTPError as exc:
        challenge = exc.headers.get("WWW-Authenticate", "") if exc.code == 401 else ""
        if not challenge:
            raise
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    token_url = f"{params['realm']}?service={params.get('service', '')}&scope=repository:{repository}:pull"
    with urllib.request.urlopen(token_url, timeout=20) as resp:
        body = json.load(resp)
    request.add_header("Authorization", f"Bearer {body.get('token') or body.get('access_token')}")
    with urllib.request.urlopen(request, timeout=20) as resp:
        return str(resp.headers["Docker-Content-Digest"])


def pin(text: str, digest_of: Callable[[str], str]) -> str:
    """`text` with every third-party image reference pinned to the digest `digest_of` gives."""

    def replace(match: re.Match[str]) -> str:
        ref = match.group("ref")
        if ref.startswith(OWN):
            return match.group(0)
        bare = DIGEST.sub("", ref)
        return f"{match.group('lead')}{bare}@{digest_of(bare)}"

    return IMAGE.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="resolve digests and rewrite the files")
    args = parser.parse_args(argv)
    unpinned = 0
    cache: dict[str, str] = {}

    def digest_of(ref: str) -> str:
        if ref not in cache:
            cache[ref] = registry_digest(ref)
        return cache[ref]

    for path in files():
        text = path.read_text()
        for match in references(text):
            ref = match.group("ref")
            pinned = bool(DIGEST.search(ref))
            unpinned += not pinned
            print(f"{'pinned  ' if pinned else 'TAG ONLY'}  {path.relative_to(DEPLOY)}: {ref}")
        if args.write:
            new = pin(text, digest_of)
            if new != text:
                path.write_text(new)
                print(f"wrote {path.relative_to(DEPLOY)}")
    if args.write:
        return 0
    return 1 if unpinned else 0


if __name__ == "__main__":
    sys.exit(main())
