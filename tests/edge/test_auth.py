"""API keys: loading (file, env), hashed storage, Bearer authentication, model allow-lists, auth off."""

from __future__ import annotations

import gc
import json
import time
import types
from collections import deque
from pathlib import Path
from typing import Any

import pytest
import yaml
from aftershock import errors
from aftershock.edge import errors as http_errors
from aftershock.edge.api_keys import ANONYMOUS, ENV_VAR, AuthConfig, KeyFileError, sha256_hex
from aftershock.edge.auth import Authenticator, main
from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.datastructures import Headers

RAW_A = "sk-test-alpha-0123456789abcdef"
RAW_B = "sk-test-bravo-fedcba9876543210"
RAW_ENV1 = "sk-env-one-5f1d2c"
RAW_ENV2 = "sk-env-two-9a8b7c"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(
        yaml.safe_dump(
            [
                {"name": "team-a", "key_sha256": sha256_hex(RAW_A), "models": ["m-small"], "rpm": 60},
                {"name": "team-b", "key": RAW_B, "tpm": 1000},
            ]
        )
    )
    return path


def test_valid_keys_from_file(keys_file: Path) -> None:
    auth = Authenticator(AuthConfig(api_keys_file=keys_file))
    a = auth.authenticate(bearer(RAW_A))
    assert (a.name, a.models, a.rpm, a.tpm, a.anonymous) == (
        "team-a",
        frozenset({"m-small"}),
        60,
        None,
        False,
    )
    b = auth.authenticate(bearer(RAW_B))
    assert (b.name, b.models, b.rpm, b.tpm) == ("team-b", None, None, 1000)
    # The scheme is case-insensitive and Starlette's headers are too.
    assert auth.authenticate(Headers({"Authorization": f"bearer  {RAW_A} "})).name == "team-a"
    assert auth.authenticate({"Authorization": f"Bearer {RAW_B}"}).name == "team-b"


@pytest.mark.parametrize("value", [None, "", "Bearer", "Bearer   ", f"Basic {RAW_A}", RAW_A])
def test_missing_key(keys_file: Path, value: str | None) -> None:
    auth = Authenticator(AuthConfig(api_keys_file=keys_file))
    headers = {} if value is None else {"authorization": value}
    with pytest.raises(errors.Unauthenticated) as exc:
        auth.authenticate(headers)
    assert "Missing API key" in exc.value.message
    assert "Authorization: Bearer" in exc.value.message
    assert exc.value.error_type == "missing_api_key"
    assert http_errors.from_domain(exc.value, "r1").status == 401


def test_unknown_key(keys_file: Path) -> None:
    auth = Authenticator(AuthConfig(api_keys_file=keys_file))
    with pytest.raises(errors.Unauthenticated) as exc:
        auth.authenticate(bearer(RAW_A + "x"))
    assert exc.value.error_type == "invalid_api_key"
    assert RAW_A not in exc.value.message
    err = http_errors.from_domain(exc.value, "r1")
    assert (err.status, err.body["error"]["code"], err.body["error"]["type"]) == (
        401,
        "invalid_api_key",
        "authentication_error",
    )


def test_model_allow_list(keys_file: Path) -> None:
    auth = Authenticator(AuthConfig(api_keys_file=keys_file))
    a = auth.authenticate(bearer(RAW_A))
    auth.authorize(a, "m-small")
    with pytest.raises(errors.PermissionDenied) as exc:
        auth.authorize(a, "m-large")
    assert (exc.value.error_type, exc.value.param) == ("model_not_allowed", "model")
    assert http_errors.from_domain(exc.value, "r1").status == 403
    # No allow-list: every model.
    b = auth.authenticate(bearer(RAW_B))
    auth.authorize(b, "m-large")
    assert auth.allowed_models(a, ["m-small", "m-large"]) == ["m-small"]
    assert auth.allowed_models(b, ["m-small", "m-large"]) == ["m-small", "m-large"]


def _reachable_strings(root: object) -> list[str]:
    """Every str reachable from `root` through containers, instance state and closures (not modules,
    classes or function globals: those are shared code, not the object's data)."""
    seen: set[int] = set()
    found: list[str] = []
    queue: deque[Any] = deque([root])
    while queue:
        obj = queue.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            found.append(obj)
        elif isinstance(obj, bytes):
            found.append(obj.decode("latin-1"))
        elif isinstance(obj, (types.ModuleType, type)):
            continue
        elif isinstance(obj, types.FunctionType):
            queue.extend(c.cell_contents for c in obj.__closure__ or ())
            queue.extend(obj.__defaults__ or ())
        else:
            queue.extend(gc.get_referents(obj))
    return found


def test_keys_are_stored_hashed_only(keys_file: Path) -> None:
    auth = Authenticator(AuthConfig(api_keys_file=keys_file, api_keys=SecretStr(f"{RAW_ENV1},{RAW_ENV2}")))
    strings = _reachable_strings(auth)
    assert len(strings) > 5  # the walk does reach the keys' data
    for raw in (RAW_A, RAW_B, RAW_ENV1, RAW_ENV2):
        assert not any(raw in s for s in strings), raw
    assert sha256_hex(RAW_B) in strings
    assert RAW_B not in repr(auth.keys)
    # And the key still authenticates through its hash.
    assert auth.authenticate(bearer(RAW_B)).name == "team-b"


def test_env_var_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    class Settings(BaseSettings):  # the shape EdgeSettings gets: AFTERSHOCK_EDGE_API_KEYS
        model_config = SettingsConfigDict(env_prefix="AFTERSHOCK_EDGE_")
        api_keys: SecretStr | None = None

    monkeypatch.setenv(ENV_VAR, f" {RAW_ENV1} ,,{RAW_ENV2},")
    settings = Settings()
    assert RAW_ENV1 not in repr(settings)
    auth = Authenticator(AuthConfig(api_keys=settings.api_keys))
    k1 = auth.authenticate(bearer(RAW_ENV1))
    k2 = auth.authenticate(bearer(RAW_ENV2))
    # Generated names come from the hash: stable across restarts and reorderings, never the key.
    assert k1.name == f"env-{sha256_hex(RAW_ENV1)[:12]}"
    assert k1.name != k2.name
    assert (k1.models, k1.rpm, k1.tpm) == (None, None, None)
    assert len(auth.keys) == 2
    # A plain string works too, with file keys beside.
    assert Authenticator(AuthConfig(api_keys=RAW_ENV1)).authenticate(bearer(RAW_ENV1)).name == k1.name


def test_auth_disabled(keys_file: Path) -> None:
    auth = Authenticator(AuthConfig(enabled=False))
    for headers in ({}, bearer("anything"), bearer(RAW_A)):
        assert auth.authenticate(headers) is ANONYMOUS
    assert ANONYMOUS.anonymous and ANONYMOUS.models is None
    auth.authorize(ANONYMOUS, "any-model")
    # Keys configured but auth off: ignored (with a warning), still anonymous.
    off = Authenticator(AuthConfig(enabled=False, api_keys_file=keys_file))
    assert off.authenticate(bearer(RAW_A)) is ANONYMOUS
    assert off.keys == ()


def test_enabled_without_keys_fails_at_startup(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no API keys"):
        Authenticator(AuthConfig())
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(KeyFileError, match="no API keys"):
        Authenticator(AuthConfig(api_keys_file=empty, api_keys=SecretStr(" , ")))


def test_json_file_and_keys_wrapper(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"name": "j", "key_sha256": sha256_hex(RAW_A).upper()}]}))
    assert Authenticator(AuthConfig(api_keys_file=path)).authenticate(bearer(RAW_A)).name == "j"


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([{"name": "x", "key": RAW_A, "key_sha256": sha256_hex(RAW_A)}], "exactly one of"),
        ([{"name": "x"}], "exactly one of"),
        ([{"name": "x", "key": RAW_A, "rmp": 5}], "rmp"),
        ([{"name": "x", "key_sha256": "abc"}], "64 hex"),
        ([{"name": "x", "key": RAW_A, "rpm": -1}], "rpm"),
        ([{"name": "x", "key": RAW_A, "models": []}], "models"),
        ([{"name": "bad name{}", "key": RAW_A}], "name"),
        ([{"name": "x", "key": RAW_A}, {"name": "x", "key": RAW_B}], "used twice"),
        ([{"name": "x", "key": RAW_A}, {"name": "y", "key_sha256": sha256_hex(RAW_A)}], "same key"),
        ([{"name": "anonymous", "key": RAW_A}], "reserved"),
        ({"name": "x", "key": RAW_A}, "must hold a list"),
        ([{"name": "x", "key": 12345678}], "key"),
    ],
)
def test_bad_key_files(tmp_path: Path, entries: Any, match: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump(entries))
    with pytest.raises(KeyFileError, match=match) as exc:
        Authenticator(AuthConfig(api_keys_file=path))
    # Never a raw key in an error that may be logged.
    assert RAW_A not in str(exc.value) and "12345678" not in str(exc.value)


def test_unparsable_file_does_not_echo_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"- name: x\n  key: {RAW_A}\n    bad: [indent\n")
    with pytest.raises(KeyFileError) as exc:
        Authenticator(AuthConfig(api_keys_file=path))
    assert RAW_A not in str(exc.value)
    with pytest.raises(KeyFileError, match="cannot read"):
        Authenticator(AuthConfig(api_keys_file=tmp_path / "absent.yaml"))


def test_reload_rotates_file_keys_and_keeps_env_keys(keys_file: Path) -> None:
    auth = Authenticator(AuthConfig(api_keys_file=keys_file, api_keys=SecretStr(RAW_ENV1)))
    keys_file.write_text(yaml.safe_dump([{"name": "team-c", "key_sha256": sha256_hex(RAW_B)}]))
    auth.reload()
    assert auth.authenticate(bearer(RAW_B)).name == "team-c"
    assert auth.authenticate(bearer(RAW_ENV1)).name.startswith("env-")
    with pytest.raises(errors.Unauthenticated):
        auth.authenticate(bearer(RAW_A))
    keys_file.write_text("[{name: broken}]")
    with pytest.raises(KeyFileError):
        auth.reload()
    assert auth.authenticate(bearer(RAW_B)).name == "team-c"  # a bad file keeps the current keys


def test_failures_are_counted(keys_file: Path) -> None:
    registry = CollectorRegistry()
    counter = Counter("aftershock_auth_failures", "t", ["reason"], registry=registry)
    auth = Authenticator(AuthConfig(api_keys_file=keys_file), failures_total=counter)
    for call in (
        lambda: auth.authenticate({}),
        lambda: auth.authenticate(bearer("nope")),
        lambda: auth.authorize(auth.authenticate(bearer(RAW_A)), "m-large"),
    ):
        with pytest.raises(errors.AftershockError):
            call()
    for reason in ("missing", "invalid", "model_not_allowed"):
        assert registry.get_sample_value("aftershock_auth_failures_total", {"reason": reason}) == 1


def test_authenticate_is_a_dict_lookup(keys_file: Path) -> None:
    auth = Authenticator(AuthConfig(api_keys_file=keys_file))
    headers = Headers({"authorization": f"Bearer {RAW_A}"})
    n = 20_000
    started = time.perf_counter()
    for _ in range(n):
        auth.authenticate(headers)
    per_call = (time.perf_counter() - started) / n
    assert per_call < 50e-6, per_call  # about 1-3 µs; the bound only catches an accidental O(keys) scan


def test_cli_hash(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["hash", RAW_A]) == 0
    assert capsys.readouterr().out.strip() == sha256_hex(RAW_A)
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(RAW_B + "\n"))
    assert main(["hash"]) == 0
    assert capsys.readouterr().out.strip() == sha256_hex(RAW_B)
    assert main(["new", "team-z"]) == 0
    out = capsys.readouterr().out
    raw = out.split(": ", 1)[1].split()[0]
    assert f"key_sha256: {sha256_hex(raw)}" in out
