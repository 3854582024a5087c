"""API keys: what a key is and where keys come from (a key file, the environment), hashed at load.

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
reveals a usable key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_VAR = "AFTERSHOCK_EDGE_API_KEYS"
ANONYMOUS_NAME = "anonymous"
# Names end up in Redis keys inside a `{...}` cluster hash tag and in log lines: no braces,
# no whitespace, bounded length.
NAME = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


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
        if not NAME.match(v):
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
    return index_keys(file_keys + env_keys(config))


def env_keys(config: AuthConfig) -> list[ApiKey]:
    raw = config.api_keys
    if isinstance(raw, SecretStr):
        raw = raw.get_secret_value()
    return parse_env_keys(raw) if raw else []


def index_keys(keys: Sequence[ApiKey]) -> dict[str, ApiKey]:
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
