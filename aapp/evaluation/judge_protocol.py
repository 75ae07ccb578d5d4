"""What every refusal judge is: a `Judge` turns (prompt, completion) pairs into `Verdict`s.

Apart from the judges themselves so that each (keyword_judge, classifier_judge) can share it
while `judges` re-exports them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Verdict:
    """One judgement. `score` is the judge's refusal probability when it has one (else None)."""

    refused: bool
    score: float | None
    reason: str


@runtime_checkable
class Judge(Protocol):
    name: str

    def judge(self, prompts: list[str], completions: list[str]) -> list[Verdict]:
        """One verdict per (prompt, completion) pair, in order."""
        ...


def check_lengths(prompts: Sequence[str], completions: Sequence[str]) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
