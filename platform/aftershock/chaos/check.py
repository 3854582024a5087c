"""One judged check of a drill: its name, outcome and a detail a person reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Outcome = Literal["pass", "fail", "skipped", "too_short"]


@dataclass(frozen=True)
class Check:
    name: str
    outcome: Outcome
    detail: str


def check(name: str, passed: bool, detail: str) -> Check:
    return Check(name, "pass" if passed else "fail", detail)
