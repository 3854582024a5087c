"""The contract lane: VllmEngine's assumptions checked against the installed vllm's real classes.

Runs only where vllm imports (scripts/vllm-contract.sh builds that environment at the pinned
version; CI runs it after scripts/test.sh). Everything the engine touches is declared once, in
aftershock.inference.vllm_api's protocols; these tests read the real classes with `inspect` and
compare, so nothing about vLLM's API is written down twice.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import itertools
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

vllm = pytest.importorskip("vllm", reason="the contract lane needs vllm (scripts/vllm-contract.sh)")

from aftershock.inference import vllm_api  # noqa: E402
from aftershock.inference.engine import ChatTurn, EngineRequest  # noqa: E402
from aftershock.inference.vllm_engine import FINISH_REASONS, VllmEngine  # noqa: E402

from tests.inference import vllm_fake, vllm_shapes  # noqa: E402
from tests.inference.test_vllm_pin import pinned_vllm_version  # noqa: E402

pytestmark = pytest.mark.vllm_contract

ROOT = Path(__file__).resolve().parents[2]


def _members(proto: type) -> dict[str, Any]:
    """The protocol's declared members: methods, properties and annotated attributes."""
    found: dict[str, Any] = {name: None for name in getattr(proto, "__annotations__", {})}
    for name, value in vars(proto).items():
        if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property)):
            found[name] = value
    return found


def _kind(fn: Any) -> str:
    """How a caller uses it: awaited (a coroutine function) or called (sync, or an async generator,
    whose call returns the iterator at once)."""
    return "awaited" if inspect.iscoroutinefunction(fn) else "called"


def _instance_attributes(cls: type) -> set[str]:
    """Attributes a class's __init__ (or its dataclass fields) set on its instances, read from source."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass):
            names.update(f.name for f in dataclasses.fields(klass))
        names.update(getattr(klass, "__annotations__", {}))
        for init in (vars(klass).get("__init__"), vars(klass).get("__post_init__")):
            if init is None or not inspect.isfunction(init):
                continue
            try:
                tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
            except (OSError, TypeError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    if isinstance(node.value, ast.Name) and node.value.id == "self":
                        names.add(node.attr)
    return names


def contract_problems(proto: type, cls: type) -> list[str]:
    problems: list[str] = []
    attributes = _instance_attributes(cls)
    for name, declared in _members(proto).items():
        where = f"{cls.__name__}.{name}"
        real = inspect.getattr_static(cls, name, None)
        if declared is None:  # a plain attribute
            if real is None and name not in attributes:
                problems.append(f"{where}: attribute missing")
            continue
        if isinstance(declared, property):
            if not isinstance(real, property):
                problems.append(f"{where}: the engine reads a property, vllm has {type(real).__name__}")
            continue
        if isinstance(real, classmethod | staticmethod):
            real = real.__func__
        if not inspect.isfunction(real):
            problems.append(f"{where}: method missing (found {type(real).__name__})")
            continue
        if _kind(declared) != _kind(real):
            problems.append(f"{where}: the engine assumes it is {_kind(declared)}, vllm's is {_kind(real)}")
        want = inspect.signature(declared).parameters
        have = inspect.signature(real).parameters
        for pname, p in want.items():
            if pname == "self":
                continue
            q = have.get(pname)
            if q is None:
                problems.append(f"{where}: no parameter {pname!r}")
            elif q.kind != p.kind:
                problems.append(
                    f"{where}: {pname!r} is {q.kind.description}, the engine assumes {p.kind.description}"
                )
            elif p.default is not inspect.Parameter.empty and q.default is inspect.Parameter.empty:
                problems.append(f"{where}: {pname!r} is required in vllm, optional for the engine")
        for qname, q in have.items():
            required = q.default is inspect.Parameter.empty and q.kind not in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            )
            if qname != "self" and required and qname not in want:
                problems.append(f"{where}: vllm requires {qname!r}, which the engine never passes")
    return problems


@pytest.mark.parametrize(
    ("proto", "module", "name"), vllm_api.CONTRACT, ids=[c[2] for c in vllm_api.CONTRACT]
)
def test_every_member_the_engine_uses_exists_with_its_parameters_and_kind(
    proto: type, module: str, name: str
) -> None:
    cls = getattr(importlib.import_module(module), name)
    assert contract_problems(proto, cls) == []


def test_the_double_keeps_to_the_same_contract() -> None:
    assert contract_problems(vllm_api.AsyncLLMLike, vllm_fake.FakeAsyncLLM) == []


def test_the_checker_catches_a_wrong_kind() -> None:
    """Negative control: a protocol that awaits a sync method (the 0.32-era engine's get_tokenizer)."""
    from typing import Protocol

    class AwaitsTokenizer(Protocol):
        async def get_tokenizer(self) -> Any: ...

    from vllm.v1.engine.async_llm import AsyncLLM

    assert contract_problems(AwaitsTokenizer, AsyncLLM) == [
        "AsyncLLM.get_tokenizer: the engine assumes it is awaited, vllm's is called"
    ]


def test_the_double_is_built_from_vllms_own_types() -> None:
    from vllm import exceptions as ex
    from vllm import outputs, sampling_params
    from vllm.v1.engine import exceptions as engine_ex

    assert vllm_fake.REAL_VLLM
    assert vllm_fake.SamplingParams is sampling_params.SamplingParams
    assert vllm_fake.RequestOutputKind is sampling_params.RequestOutputKind
    assert vllm_fake.RequestOutput is outputs.RequestOutput
    assert vllm_fake.CompletionOutput is outputs.CompletionOutput
    for name in (
        "VLLMClientError",
        "VLLMValidationError",
        "VLLMNotFoundError",
        "GracefulHTTPError",
        "QueueOverflowError",
        "RetryableRequestError",
        "GenerationError",
    ):
        assert getattr(vllm_fake, name) is getattr(ex, name), name
    assert vllm_fake.EngineDeadError is engine_ex.EngineDeadError
    assert vllm_fake.EngineGenerateError is engine_ex.EngineGenerateError
    assert vllm_api.real_api().errors == vllm_fake.ERRORS


def test_the_normal_lane_shapes_match_vllms() -> None:
    """vllm_shapes stands in where vllm is absent: same enum, defaults, argument order, hierarchy."""
    from vllm.outputs import CompletionOutput
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    assert {k.name: k.value for k in vllm_shapes.RequestOutputKind} == {
        k.name: k.value for k in RequestOutputKind
    }
    real, shape = SamplingParams(), vllm_shapes.SamplingParams()
    for attr in (
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "stop",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
    ):
        assert getattr(shape, attr) == getattr(real, attr), attr
    fields = [f.name for f in dataclasses.fields(CompletionOutput)]
    assert [f.name for f in dataclasses.fields(vllm_shapes.CompletionOutput)][:5] == fields[:5]
    names = [
        n
        for n in vars(vllm_shapes)
        if isinstance(getattr(vllm_shapes, n), type) and issubclass(getattr(vllm_shapes, n), Exception)
    ]
    for a, b in itertools.permutations(names, 2):
        real_a, real_b = (getattr(vllm_fake, n, None) for n in (a, b))
        if real_a is None or real_b is None:
            continue
        shape_a, shape_b = getattr(vllm_shapes, a), getattr(vllm_shapes, b)
        assert issubclass(shape_a, shape_b) == issubclass(real_a, real_b), (a, b)
    assert not issubclass(vllm_fake.VLLMValidationError, ValueError)
    assert not issubclass(vllm_fake.EngineDeadError, RuntimeError)


def test_every_finish_reason_vllm_returns_is_mapped() -> None:
    from vllm.v1.engine import FINISH_REASON_STRINGS

    assert set(FINISH_REASON_STRINGS) <= set(FINISH_REASONS)


def test_what_the_engine_reads_and_passes_exists() -> None:
    from vllm import envs
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.v1.metrics.stats import RequestStateStats

    assert "prompt_token_ids" in TokensPrompt.__required_keys__
    stats = {f.name for f in dataclasses.fields(RequestStateStats)}
    assert {"queued_ts", "scheduled_ts"} <= stats
    assert "served_model_name" in {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    assert isinstance(envs.VLLM_BATCH_INVARIANT, bool)
    assert {"generate", "abort"} <= set(vars(vllm.AsyncLLMEngine))


def test_deploys_engine_args_are_engine_args() -> None:
    import yaml
    from vllm.engine.arg_utils import AsyncEngineArgs

    fields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    docs = list(yaml.safe_load_all((ROOT / "deploy/k8s/base/inference.yaml").read_text()))
    [container] = docs[0]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    args = json.loads(env["AFTERSHOCK_INFERENCE_VLLM_ENGINE_ARGS"])
    assert set(args) <= fields


def test_installed_vllm_is_the_pinned_one() -> None:
    assert vllm.__version__ == pinned_vllm_version()


# Every request shape the edge accepts (edge/schema.py): max_tokens absent or 1.., temperature
# [0, 2], top_p (0, 1], seed any int64, up to 4 stop strings; a prompt or chat messages; and models
# with and without generation_config defaults.
SHAPES = list(
    itertools.product(
        (0, 1, 100),
        (None, 0.0, 1e-3, 0.7, 2.0),
        (None, 1e-3, 0.5, 1.0),
        (None, 0, -(2**63), 2**63 - 1),
        ((), ("\n",), ("a", "b", "c", "d")),
        ("prompt", "chat"),
        ({}, {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05, "max_tokens": 64}),
    )
)


async def test_sampling_params_validate_with_the_real_class_for_every_edge_request_shape() -> None:
    engines: dict[int, tuple[VllmEngine, vllm_fake.FakeAsyncLLM]] = {}
    for i, config in enumerate(({}, SHAPES[-1][-1])):
        fake = vllm_fake.FakeAsyncLLM(max_model_len=512, generation_config=dict(config))
        engines[i] = (await vllm_fake.started_engine(fake))[0], fake
    failures: list[str] = []
    for max_tokens, temperature, top_p, seed, stop, kind, config in SHAPES:
        engine, fake = engines[0 if not config else 1]
        req = EngineRequest(
            "shape",
            "org/model-7b",
            max_tokens,
            prompt="Hi there" if kind == "prompt" else None,
            messages=(ChatTurn("user", "Hi there"),) if kind == "chat" else None,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=stop,
        )
        try:
            it = engine.generate(req)
            await it.__anext__()  # the real SamplingParams was built and reached the double
            await it.aclose()  # type: ignore[attr-defined]
        except Exception as exc:
            failures.append(f"{req}: {type(exc).__name__}: {exc}")
    assert failures == []
    built = [c.params for _, f in engines.values() for c in f.calls]
    assert len(built) == len(SHAPES) and all(isinstance(p, vllm_fake.SamplingParams) for p in built)
    assert all(p.max_tokens > 16 for p in built if p.max_tokens not in (1, 64))
