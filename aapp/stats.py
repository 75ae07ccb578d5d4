"""Statistics with no meaning of their own: plain numbers in, plain numbers out.

Its own module, below both calibration and evaluation, so that calibration (which scores its
gate with `auroc`) need not import the evaluation layer above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float | None:
    """Probability that a random positive outscores a random negative (ties count half); None if a side is empty."""
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test on paired yes/no outcomes: the probability, if neither side were
    better, of a split of the b + c discordant pairs at least as uneven as (b, c) (Binomial(b + c, 1/2)).
    1.0 when there is no discordant pair."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)
