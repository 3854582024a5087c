"""The official openai SDK and curl against the edge of a real three-process stack."""

from __future__ import annotations

import shutil
import subprocess

import openai
import pytest
from aftershock.inference.engine import ChatTurn, render_chat
from aftershock.inference.sim_tokens import count_prompt_tokens, expected_text
from aftershock.stack import Stack

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something, please."}]
PROMPT = render_chat([ChatTurn(m["role"], m["content"]) for m in MESSAGES])


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.edge_url}/v1", api_key="unused-locally", max_retries=0)


def test_chat_completion(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="sim-fast", messages=MESSAGES, max_tokens=12, seed=7)  # type: ignore[arg-type]
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected_text("sim-fast", PROMPT, 7, 12)
    assert choice.finish_reason == "length"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 12
    assert resp.usage.prompt_tokens == count_prompt_tokens(PROMPT)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 12
    assert resp.model == "sim-fast"
    assert resp.object == "chat.completion"


def test_streamed_chat_completion(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="sim-fast",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=40,
        seed=11,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text("sim-fast", PROMPT, 11, 40)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.completion_tokens == 40
    assert usage.prompt_tokens == count_prompt_tokens(PROMPT)


def test_text_completion_and_stop(client: openai.OpenAI) -> None:
    full = expected_text("sim-fast", "Once upon a time", 3, 30)
    resp = client.completions.create(model="sim-fast", prompt="Once upon a time", max_tokens=30, seed=3)
    assert resp.choices[0].text == full
    # A stop string taken from the middle of the known output ends generation there.
    words = full.split(" ")
    stop = " " + words[5]
    cut = full[: full.index(stop)]
    resp = client.completions.create(
        model="sim-fast", prompt="Once upon a time", max_tokens=30, seed=3, stop=[stop]
    )
    assert resp.choices[0].text == cut
    assert resp.choices[0].finish_reason == "stop"


def test_greedy_requests_are_deterministic(client: openai.OpenAI) -> None:
    kwargs = {"model": "sim-fast", "messages": MESSAGES, "max_tokens": 10, "temperature": 0.0}
    first = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    second = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    assert first.choices[0].message.content == second.choices[0].message.content


def test_models_list(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert ids == {"sim-fast", "sim-slow"}


def test_sdk_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="sim-fast", messages=MESSAGES, max_tokens=100_000)  # type: ignore[arg-type]


def test_curl_shows_the_sse_stream(stack: Stack) -> None:
    assert shutil.which("curl"), "curl is installed by scripts/setup.sh"
    body = (
        '{"model":"sim-fast","stream":true,"max_tokens":5,"seed":1,'
        '"messages":[{"role":"user","content":"hi"}]}'
    )
    out = subprocess.run(
        [
            "curl",
            "-sN",
            f"{stack.edge_url}/v1/chat/completions",
            "-H",
            "content-type: application/json",
            "-d",
            body,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    events = [line for line in out.split("\n\n") if line.strip()]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert '"finish_reason":"length"' in events[-2]
