"""Authentication at the edge: `Authorization: Bearer <key>`, checked against the SHA-256 hashes of
the configured keys (api_keys.py) held in memory: one SHA-256 and one dict lookup (about a
microsecond). Also the operator CLI that hashes and creates keys.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence

from prometheus_client import Counter

from aftershock import errors
from aftershock.edge.api_keys import (
    ANONYMOUS,
    ENV_VAR,
    NAME,
    AuthConfig,
    KeyFileError,
    env_keys,
    index_keys,
    load_key_file,
    sha256_hex,
)
from aftershock.edge.api_keys import ApiKey as ApiKey  # re-exported: ratelimit.py imports it from here

log = logging.getLogger(__name__)

MISSING_KEY_MESSAGE = (
    "Missing API key. Provide it in the Authorization header using Bearer auth "
    "(Authorization: Bearer YOUR_KEY)."
)
INVALID_KEY_MESSAGE = "Incorrect API key provided."


class Authenticator:
    """`authenticate(headers) -> ApiKey`, then `authorize(key, model)` once the body is parsed.

    With auth disabled every request is ANONYMOUS (and shares the default rate limits). With auth
    enabled and no keys configured, construction fails: an edge that refuses everyone is a
    misconfiguration to catch at startup, not at the first request.
    """

    def __init__(self, config: AuthConfig, *, failures_total: Counter | None = None) -> None:
        self.enabled = config.enabled
        self._keys_file = config.api_keys_file
        # Env keys are kept as ApiKeys (hashes) so reload() can re-read the file without the raw keys;
        # the config object itself, which holds them, is not kept.
        self._env_keys = env_keys(config) if config.enabled else []
        self._by_hash: dict[str, ApiKey] = self._load() if config.enabled else {}
        if not config.enabled and (config.api_keys_file is not None or config.api_keys):
            log.warning("auth is disabled: the configured API keys are ignored")
        self._count: Callable[[str], None] = _counter(failures_total)

    def _load(self) -> dict[str, ApiKey]:
        file_keys = load_key_file(self._keys_file) if self._keys_file is not None else []
        by_hash = index_keys(file_keys + self._env_keys)
        if not by_hash:
            raise KeyFileError(
                f"auth is enabled but no API keys are configured: set api_keys_file or {ENV_VAR}, "
                "or disable auth"
            )
        return by_hash

    @property
    def keys(self) -> Sequence[ApiKey]:
        return tuple(self._by_hash.values())

    def authenticate(self, headers: Mapping[str, str]) -> ApiKey:
        if not self.enabled:
            return ANONYMOUS
        # Starlette's Headers are case-insensitive; the second lookup serves a plain dict.
        value = headers.get("authorization") or headers.get("Authorization")
        token = _bearer_token(value)
        if not token:
            self._count("missing")
            raise errors.Unauthenticated(MISSING_KEY_MESSAGE, error_type="missing_api_key")
        digest = sha256_hex(token)
        key = self._by_hash.get(digest)
        # The lookup is by hash, so timing reveals nothing about the key; compare_digest confirms
        # the match in constant time all the same.
        if key is None or not hmac.compare_digest(key.key_sha256, digest):
            self._count("invalid")
            raise errors.Unauthenticated(INVALID_KEY_MESSAGE, error_type="invalid_api_key")
        return key

    def authorize(self, key: ApiKey, model: str) -> None:
        if key.models is not None and model not in key.models:
            self._count("model_not_allowed")
            raise errors.PermissionDenied(
                f"The API key '{key.name}' is not allowed to use the model '{model}'.",
                param="model",
                error_type="model_not_allowed",
            )

    def allowed_models(self, key: ApiKey, models: Sequence[str]) -> list[str]:
        """The subset of `models` this key may use (for /v1/models)."""
        return list(models) if key.models is None else [m for m in models if m in key.models]

    def reload(self) -> None:
        """Re-read the key file (rotation without a restart). On error the current keys stay."""
        if self.enabled:
            # One reference swap: a request in flight sees the old dict or the new one, never a mix.
            self._by_hash = self._load()


def _bearer_token(value: str | None) -> str:
    if not value:
        return ""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


def _counter(parent: Counter | None) -> Callable[[str], None]:
    """`aftershock_auth_failures_total{reason}` when the caller passes it; a no-op otherwise."""
    if parent is None:
        return lambda _reason: None
    children = {r: parent.labels(r) for r in ("missing", "invalid", "model_not_allowed")}
    return lambda reason: children[reason].inc()


# --- operator CLI: python -m aftershock.edge.auth hash KEY | new NAME ----------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aftershock.edge.auth", description="API keys of the Aftershock edge."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser("hash", help="print the key_sha256 of a key")
    h.add_argument(
        "key",
        nargs="?",
        default="-",
        help="the raw key; '-' or none reads stdin (keeps it out of shell history)",
    )
    n = sub.add_parser("new", help="generate a key and print it with its key file entry")
    n.add_argument("name")
    args = parser.parse_args(argv)
    if args.command == "hash":
        raw = sys.stdin.readline().strip() if args.key == "-" else args.key
        if not raw:
            parser.error("empty key")
        print(sha256_hex(raw))
        return 0
    if not NAME.match(args.name):
        parser.error("name must be 1-128 characters of letters, digits and ._:@/+=-")
    raw = "sk-as-" + secrets.token_urlsafe(32)
    print(f"key (give it to the client; it is not stored anywhere): {raw}")
    print("key file entry:")
    print(f"- name: {args.name}\n  key_sha256: {sha256_hex(raw)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
