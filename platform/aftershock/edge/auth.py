"""API keys at the edge: `Authorization: Bearer <key>`, checked against SHA-256 hashes held in memory.

Keys come from a file (YAML or JSON) and/or the `AFTERSHOCK_EDGE_API_KEYS` environment variable
(comma-separated raw keys). The file is a list of entries (a mapping `{keys: [...]}` works too):

    - name: team-a                      # shows in logs, metrics and rate-limit keys; unique
      key_sha256: 5e884898da28...       # recommended: `python -m aftershock.edge.auth hash`
      models: [llama-3-8b]              # optional allow-list; omit it to allow every model
      rpm: 600                          # optional requests per minute (0 = unlimited)
      tpm: 200000                       # optional tokens per minute (0 = unlimited)
    - name: ci
      key: sk-raw-key                   # accepted, hashed at load; keep raw keys out of files

Only the hash of a key is ever kept, so a heap dump, a log line or a repr of the loaded keys never
reveals a usable key. Authentication is one SHA-256 and one dict lookup (about a microsecond).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import re
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import Counter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from aftershock import errors

log = logging.getLogger(__name__)

ENV_VAR = "AFTERSHOCK_EDGE_API_KEYS"
ANONYMOUS_NAME = "anonymous"
# Names end up in Redis keys inside a `{...}` cluster hash tag and in log lines: no braces,
# no whitespace, bounded length.
_NAME = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

MISSING_KEY_MESSAGE = (
    "Missing API key. Provide it in the Authorization header using Bearer auth "
    "(Authorization: Bearer YOUR_KEY)."
)
INVALID_KEY_MESSAGE = "Incorrect API key provided."


def sha256_hex(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An authenticated caller. `models` None allows every model; rpm/tpm None means the default."""

    name: str
    # repr=False: the hash is not a secret that grants access, but it has no business in logs.
    key_sha256: str = field(repr=False)
    models: frozenset[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    anonymous: bool = False


ANONYMOUS = ApiKey(name=ANONYMOUS_NAME, key_sha256="", anonymous=True)


@dataclass(frozen=True)
class AuthConfig:
    """Filled from EdgeSettings (auth_enabled, api_keys_file, api_keys)."""

    enabled: bool = True
    api_keys_file: Path | None = None
    # Comma-separated raw keys (AFTERSHOCK_EDGE_API_KEYS); a SecretStr keeps them out of reprs.
    api_keys: SecretStr | str | None = field(default=None, repr=False)


class KeyFileError(ValueError):
    """The key file cannot be used; the message never contains a raw key."""


class _Entry(BaseModel):
    # hide_input_in_errors: a validation error must not echo a raw key into a log.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, hide_input_in_errors=True)

    name: str
    key_sha256: str | None = None
    key: str | None = Field(None, min_length=1)
    models: list[str] | None = Field(None, min_length=1)
    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be 1-128 characters of letters, digits and ._:@/+=-")
        return v

    @field_validator("key_sha256")
    @classmethod
    def _hash(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip().lower()
        if not _SHA256_HEX.match(v):
            raise ValueError("must be 64 hex digits (python -m aftershock.edge.auth hash KEY)")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> _Entry:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key_sha256 (recommended) or key")
        return self

    def to_api_key(self) -> ApiKey:
        digest = self.key_sha256 if self.key_sha256 is not None else sha256_hex(self.key or "")
        models = frozenset(self.models) if self.models is not None else None
        return ApiKey(self.name, digest, models, self.rpm, self.tpm)


def load_key_file(path: Path) -> list[ApiKey]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"cannot read API key file {path}: {exc.strerror}") from None
    try:
        # YAML is a superset of JSON, but JSON files get JSON's stricter errors.
        data: Any = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        # The parser's message may quote a line of the file, which may hold a raw key.
        raise KeyFileError(f"API key file {path} is not valid {type(exc).__name__}") from None
    if isinstance(data, dict) and set(data) == {"keys"}:
        data = data["keys"]
    if data is None:
        data = []
    if not isinstance(data, list):
        raise KeyFileError(f"API key file {path} must hold a list of keys")
    keys: list[ApiKey] = []
    for i, item in enumerate(data):
        try:
            keys.append(_Entry.model_validate(item).to_api_key())
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "entry"
            raise KeyFileError(f"API key file {path}, entry {i}: {where}: {first['msg']}") from None
    return keys


def parse_env_keys(raw: str) -> list[ApiKey]:
    """Comma-separated raw keys; each is named by its hash prefix, which is stable across restarts."""
    keys = []
    for part in raw.split(","):
        part = part.strip()
        if part:
            digest = sha256_hex(part)
            keys.append(ApiKey(f"env-{digest[:12]}", digest))
    return keys


def load_keys(config: AuthConfig) -> dict[str, ApiKey]:
    """All configured keys by hash; KeyFileError on duplicates or a bad file."""
    file_keys = load_key_file(config.api_keys_file) if config.api_keys_file is not None else []
    return _index(file_keys + _env_keys(config))


def _env_keys(config: AuthConfig) -> list[ApiKey]:
    raw = config.api_keys
    if isinstance(raw, SecretStr):
        raw = raw.get_secret_value()
    return parse_env_keys(raw) if raw else []


def _index(keys: Sequence[ApiKey]) -> dict[str, ApiKey]:
    by_hash: dict[str, ApiKey] = {}
    names: set[str] = set()
    for key in keys:
        if key.key_sha256 in by_hash:
            raise KeyFileError(f"API key '{key.name}' is the same key as '{by_hash[key.key_sha256].name}'")
        if key.name in names or key.name == ANONYMOUS_NAME:
            raise KeyFileError(f"API key name '{key.name}' is used twice or reserved")
        by_hash[key.key_sha256] = key
        names.add(key.name)
    return by_hash


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
        self._env_keys = _env_keys(config) if config.enabled else []
        self._by_hash: dict[str, ApiKey] = self._load() if config.enabled else {}
        if not config.enabled and (config.api_keys_file is not None or config.api_keys):
            log.warning("auth is disabled: the configured API keys are ignored")
        self._count: Callable[[str], None] = _counter(failures_total)

    def _load(self) -> dict[str, ApiKey]:
        file_keys = load_key_file(self._keys_file) if self._keys_file is not None else []
        by_hash = _index(file_keys + self._env_keys)
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
    if not _NAME.match(args.name):
        parser.error("name must be 1-128 characters of letters, digits and ._:@/+=-")
    raw = "sk-as-" + secrets.token_urlsafe(32)
    print(f"key (give it to the client; it is not stored anywhere): {raw}")
    print("key file entry:")
    print(f"- name: {args.name}\n  key_sha256: {sha256_hex(raw)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
