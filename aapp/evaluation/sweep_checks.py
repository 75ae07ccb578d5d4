"""What a sweep checks before it generates: each fails in seconds a run that would fail after hours.

They need files or the loaded model, so they cannot live in the settings; the judge is checked by
aapp.evaluation.judges.check_judge, which loads nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aapp.errors import CalibrationError, InputError
from aapp.evaluation.sweep_config import DENSE, CellSettings, PerplexitySettings
from aapp.evaluation.sweep_plan import Cell
from aapp.evaluation.sweep_store import CellStore


def check_calibration_given(cells: CellSettings) -> None:
    """Before any model loads: every method of the sweep that needs a calibration has one."""
    for m in cells.methods:
        if m != DENSE:
            cells.method(m).check_calibration(cells.calib)


def check_out(out: Path, store: CellStore, resume: bool) -> None:
    """`out` can take the outputs, and holds no cells of an earlier sweep unless we resume it."""
    from aapp.evaluation.report import check_out_dir

    check_out_dir(out)
    if (out / ".partial").exists():  # the per-batch log of aapp before cells were the unit of resume
        raise InputError(f"the out directory {out} holds an unfinished sweep of an older aapp ({out / '.partial'}), which this "
                         "one cannot continue; remove it to start over")
    if store.exists() and not resume:
        raise InputError(f"the out directory {out} holds the cells of an earlier sweep ({store.dir}); pass resume to reuse "
                         "those with the same settings, or remove the directory to start over")


def check_methods(settings: CellSettings, cells: Sequence[Cell], loaded, calib) -> None:
    """Bind every method once on the model (fingerprint, alignment statistics, gate layer...)."""
    from aapp.pruning.engine import prune_model

    for method in dict.fromkeys(c.method for c in cells):
        ratio = max(c.ratio for c in cells if c.method == method)
        try:
            prune_model(loaded, settings.method(method), settings.prune_options(method, ratio), calib).remove()
        except CalibrationError as e:
            raise CalibrationError(f"methods {method}: {e}") from None


def check_text(ppl: PerplexitySettings, loaded, texts: Sequence[str]) -> None:
    """The held-out text fills at least one perplexity window."""
    from aapp.calibration.run import pack_tokens

    try:
        pack_tokens(loaded.tokenizer, texts, 1, ppl.seq_len)
    except InputError:
        raise InputError(f"ppl text {ppl.text}: its held-out part is shorter than one perplexity window "
                         f"of {ppl.seq_len} tokens") from None
