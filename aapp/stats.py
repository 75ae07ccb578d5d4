"""Statistics with no meaning of their own: plain numbers in, plain numbers out.

Its own module, below both calibration and evaluation, so that calibration (which scores its
gate with `auroc`) need not import the evaluation layer above it.
"""

from __future__ import annotations

from collections.abc import Sequence


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float | None:
    """Probability that a random positive outscores a random negative (ties count half); None if a side is empty."""
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))
