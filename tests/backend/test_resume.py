"""The resume cursor: skipping, by characters, the text a caller already has, and when resuming is
allowed at all."""

from __future__ import annotations

import random

from aftershock.backend.resume import ResumeCursor, is_deterministic
from aftershock.inference.sim_tokens import TokenStream
from aftershock.v1 import generation_pb2 as pb

from tests.inproc import generate_request


def msg(
    *tokens: str, finish: pb.FinishReason.ValueType = pb.FINISH_REASON_UNSPECIFIED, reproducible: bool = True
) -> pb.GenerateResponse:
    return pb.GenerateResponse(tokens=list(tokens), finish_reason=finish, reproducible=reproducible)


def resumed_after(*delivered: str) -> ResumeCursor:
    """A cursor that handed `delivered` to the caller, and whose source then started over."""
    cursor = ResumeCursor()
    for text in delivered:
        assert cursor.admit(msg(text)) is not None
    cursor.restart()
    return cursor


def test_a_fresh_cursor_passes_everything_and_counts_it() -> None:
    cursor = ResumeCursor()
    kept = cursor.admit(msg("ab", "ü"))
    assert kept is not None and list(kept.tokens) == ["ab", "ü"]
    assert cursor.delivered == 3  # characters, not bytes


def test_skip_within_pieces_split_differently_on_resume() -> None:
    # The first replica delivered "Hello wor" as ["Hello", " wor"]; the new one splits differently.
    cursor = resumed_after("Hello", " wor")
    kept = cursor.admit(msg("Hel", "lo w", "orld", "!"))
    assert kept is not None and list(kept.tokens) == ["ld", "!"]
    assert cursor.delivered == len("Hello world!")


def test_skip_that_consumes_a_whole_message_sends_nothing() -> None:
    cursor = resumed_after("0123456789")
    assert cursor.admit(msg(" one", " two")) is None
    kept = cursor.admit(msg("89", "x"))
    assert kept is not None and list(kept.tokens) == ["x"]


def test_finish_message_with_nothing_left_is_still_sent() -> None:
    cursor = resumed_after(" end")
    kept = cursor.admit(msg(" end", finish=pb.FINISH_REASON_LENGTH))
    assert kept is not None and list(kept.tokens) == []
    assert kept.finish_reason == pb.FINISH_REASON_LENGTH


def test_skip_on_a_piece_boundary_keeps_the_next_piece_whole() -> None:
    cursor = resumed_after("ab")
    kept = cursor.admit(msg("ab", "cd", "ef"))
    assert kept is not None and list(kept.tokens) == ["cd", "ef"]


def test_two_restarts_skip_everything_delivered_so_far() -> None:
    cursor = resumed_after("abc")
    assert list(cursor.admit(msg("abcd")).tokens) == ["d"]  # type: ignore[union-attr]
    cursor.restart()  # broke again after "abcd": the third source skips all four
    assert list(cursor.admit(msg("ab", "cde")).tokens) == ["e"]  # type: ignore[union-attr]


def test_skip_spanning_messages_reproduces_the_text_exactly() -> None:
    text = "".join(TokenStream("m", "tell me a story", 3).next() for _ in range(60))
    rng = random.Random(11)
    for _ in range(200):
        # The resumed stream, cut into random messages of random pieces (non-ASCII included).
        full = text + " ünï ☃ end"
        cuts = sorted(rng.sample(range(1, len(full)), rng.randint(1, 25)))
        pieces = [full[a:b] for a, b in zip([0, *cuts], [*cuts, len(full)], strict=True)]
        messages: list[pb.GenerateResponse] = []
        while pieces:
            n = rng.randint(1, 4)
            messages.append(msg(*pieces[:n]))
            pieces = pieces[n:]
        messages[-1].finish_reason = pb.FINISH_REASON_STOP
        delivered = rng.randint(0, len(full))
        cursor = resumed_after(full[:delivered]) if delivered else ResumeCursor()
        sent = [kept for m in messages if (kept := cursor.admit(m)) is not None]
        assert "".join(t for m in sent for t in m.tokens) == full[delivered:]
        assert sent[-1].finish_reason == pb.FINISH_REASON_STOP  # the end always arrives
        assert cursor.delivered == len(full)


def test_deterministic_means_seeded_or_greedy() -> None:
    assert is_deterministic(generate_request("m", seed=0))
    assert is_deterministic(generate_request("m", seed=None, temperature=0.0))
    assert not is_deterministic(generate_request("m", seed=None))
    assert not is_deterministic(generate_request("m", seed=None, temperature=0.7))


def test_resume_needs_determinism_and_reproducible_output_once_text_was_delivered() -> None:
    seeded = generate_request("m", seed=3)
    unseeded = generate_request("m", seed=None)
    fresh = ResumeCursor()
    assert fresh.may_resume(seeded) and fresh.may_resume(unseeded)  # nothing delivered: always
    reproducible = ResumeCursor()
    reproducible.admit(msg("a"))
    assert reproducible.may_resume(seeded)
    assert not reproducible.may_resume(unseeded)
    mixed = ResumeCursor()
    mixed.admit(msg("a"))
    mixed.admit(msg("b", reproducible=False))  # one message the replica did not vouch for
    assert not mixed.may_resume(seeded)
