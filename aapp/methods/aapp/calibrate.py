"""AAPP's part of `aapp calibrate`: harmful and harmless passes, and the gates fitted on them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aapp.calibration.alignment import collect_set, post_instruction_tokens, window_features
from aapp.calibration.run import TextSettings, pack_tokens
from aapp.calibration.store import Alignment, Calibration
from aapp.errors import InputError
from aapp.methods.aapp.gates import fit_gates
from aapp.models.loading import LoadedModel


def add_alignment(cal: Calibration, loaded: LoadedModel, harmful: Sequence[str], harmless: Sequence[str],
                  description: dict, batch_size: int = 8, on_batch: Callable[[int], None] | None = None,
                  prose: Sequence[str] = (), prose_settings: TextSettings = TextSettings(samples=32),
                  on_fit: Callable[[int, int], None] | None = None) -> None:
    """Add AAPP's alignment statistics and fitted gates to `cal` in place. `prose` (general text,
    cut into windows by `prose_settings`) joins the harmless side of the fitted gate, so that it
    learns not to fire on raw text. `on_fit(done, total)` follows the fitted gate's layers."""
    if not harmful or not harmless:
        raise InputError("alignment calibration needs both harmful and harmless prompts")
    h = collect_set(loaded, list(harmful), batch_size, on_batch)
    s = collect_set(loaded, list(harmless), batch_size, on_batch)
    n_post = post_instruction_tokens(loaded.tokenizer)
    windows = None
    if prose:
        packed = pack_tokens(loaded.tokenizer, prose, prose_settings.samples, prose_settings.seq_len)
        windows = window_features(loaded, packed, n_post, batch_size)
    cal.alignment = Alignment(harmful=h.stats, harmless=s.stats, gates=fit_gates(h, s, windows, on_fit))
    cal.meta.update(harmful=description.get("harmful"), harmless=description.get("harmless"),
                    harmful_count=len(harmful), harmless_count=len(harmless),
                    post_instruction_tokens=n_post, gate_prose_windows=0 if windows is None else len(windows))
