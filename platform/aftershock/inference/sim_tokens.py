"""Deterministic token streams for the simulator: a pure function of (model, prompt, seed)."""

from __future__ import annotations

import hashlib
import random

# A small English vocabulary; each token is a word with its leading space, as BPE tokens often are.
_WORDS = (
    "the of and to in is that it for was on are as with be at by this have from or one had not but what "
    "all were when we there can an your which their said if do will each about how up out them then she "
    "many some so these would other into has more her two like him see time could no make than first been "
    "its who now people my made over did down only way find use may water long little very after words "
    "called just where most know get through back much before go good new write our used me man too any "
    "day same right look think also around another came come work three word must because does part even "
    "place well such here take why things help put years different away again off went old number great "
    "tell men say small every found still between name should home big give air line set own under read "
    "last never us left end along while might next sound below saw something thought both few those always "
    "looked show large often together asked house world going want school important until form food keep "
    "children feet land side without boy once animals life enough took sometimes four head above kind began "
    "almost live page got earth need far hand high year mother light parts country father let night "
    "following "
    "picture being study second eyes soon times story boys since white days ever paper hard near sentence "
    "better best across during today others however sure means knew its try told young miles sun ways thing "
    "whole hear example heard several change answer room sea against top turned learn point city play toward "
    "five using himself usually"
).split()
VOCAB: tuple[str, ...] = tuple(" " + w for w in _WORDS)


def stream_seed(model: str, prompt: str, seed: int) -> int:
    digest = hashlib.blake2b(f"{model}\x00{seed}\x00{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class TokenStream:
    """Yields the i-th token of a (model, prompt, seed) stream; the same triple always gives the same text."""

    __slots__ = ("_rng",)

    def __init__(self, model: str, prompt: str, seed: int) -> None:
        self._rng = random.Random(stream_seed(model, prompt, seed))

    def next(self) -> str:
        return VOCAB[self._rng.getrandbits(30) % len(VOCAB)]


def expected_text(model: str, prompt: str, seed: int, n: int) -> str:
    """The text the simulator produces for n tokens: lets tests check content exactly."""
    stream = TokenStream(model, prompt, seed)
    return "".join(stream.next() for _ in range(n))


def prompt_tokens(prompt: str) -> list[str]:
    """The simulator's tokenizer: whitespace-separated words (an empty prompt is one empty token)."""
    return prompt.split() or [""]


def count_prompt_tokens(prompt: str) -> int:
    return len(prompt_tokens(prompt))
