"""AAPP's part of `aapp calibrate`: harmful and harmless passes, and the gates fitted on them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aapp.calibration.alignment import collect_set, post_instruction_tokens
from aapp.calibration.store import Alignment, Calibration
from aapp.errors import InputError
from aapp.methods.aapp.gates import fit_gates
from aapp.models.loading import LoadedModel


def add_alignment(cal: Calibration, loaded: LoadedModel, harmful: Sequence[str], harmless: Sequence[str],
                  description: dict, batch_size: int = 8, on_batch: Callable[[int], None] | None = None) -> None:
    """Add AAPP's alignment statistics and fitted gates to `cal` in place."""
    if not harmful or not harmless:
        raise InputError("alignment calibration needs both harmful and harmless prompts")
    h = collect_set(loaded, list(harmful), batch_size, on_batch)
    s = collect_set(loaded, list(harmless), batch_size, on_batch)
    cal.alignment = Alignment(harmful=h.stats, harmless=s.stats, gates=fit_gates(h, s))
    cal.meta.update(harmful=description.get("harmful"), harmless=description.get("harmless"),
                    harmful_count=len(harmful), harmless_count=len(harmless),
                    post_instruction_tokens=post_instruction_tokens(loaded.tokenizer))
