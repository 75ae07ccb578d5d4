"""What a sweep checks before it generates: each fails in seconds a run that would fail after hours.

They need files or the loaded model, so they cannot live in SweepConfig; the judge is
checked by aapp.evaluation.judges.check_judge, which loads nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from aapp.errors import CalibrationError, InputError
from aapp.evaluation.sweep_config import DENSE, SweepConfig
from aapp.evaluation.sweep_log import WorkLog
from aapp.evaluation.sweep_plan import Cell


def check_calibration_given(cfg: SweepConfig) -> None:
    needs_calib = [m for m in cfg.methods if m != DENSE and cfg.method(m).needs_calibration]
    if needs_calib and cfg.calib is None:
        raise InputError(f"--methods {','.join(needs_calib)} need --calib (make one with `aapp calibrate`)")


def check_out(out: Path, log: WorkLog, resume: bool) -> None:
    """`out` can take the outputs, and holds no unfinished sweep unless we resume it."""
    from aapp.evaluation.report import check_out_dir

    check_out_dir(out)
    if log.exists() and not resume:
        raise InputError(f"--out {out} holds an unfinished sweep ({log.dir}); pass --resume to continue it, "
                         "or remove the directory to start over")


def check_methods(cfg: SweepConfig, cells: Sequence[Cell], loaded, calib) -> None:
    """Bind every method once on the model (fingerprint, alignment statistics, gate layer...)."""
    from aapp.pruning.engine import prune_model

    for method in dict.fromkeys(c.method for c in cells):
        ratio = max(c.ratio for c in cells if c.method == method)
        try:
            prune_model(loaded, cfg.method(method), replace(cfg.prune, ratio=ratio), calib).remove()
        except CalibrationError as e:
            raise CalibrationError(f"--methods {method}: {e}") from None


def check_text(cfg: SweepConfig, loaded, texts: Sequence[str]) -> None:
    """The held-out text fills at least one perplexity window."""
    from aapp.calibration.run import pack_tokens

    try:
        pack_tokens(loaded.tokenizer, texts, 1, cfg.ppl_seq_len)
    except InputError:
        raise InputError(f"--text {cfg.text}: its held-out part is shorter than one perplexity window "
                         f"of {cfg.ppl_seq_len} tokens") from None
