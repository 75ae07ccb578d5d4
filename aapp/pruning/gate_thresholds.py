"""AAPP's gate thresholds fitted on the features a pruned model gives (issue #15).

AAPP's gate reads the block input of its layer, and every pruned layer before it has already
run, selecting as Probe Pruning does (the gate has not decided yet). Pruning keeps the order of
the gate's scores but shifts their scale, so a threshold fitted on the dense model's features
may never be passed. Here, per ratio, the harmful and harmless calibration prompts run PP's
pruned prefill (no generation), each prompt's post-instruction mean residual is read at every
layer input as the dense pass reads it (aapp.calibration.alignment.prompt_features), and every
residual gate's threshold is refitted there (aapp.methods.aapp.gates.refit_thresholds).

Batches hold prompts of one kind, as `aapp eval-refusal` sends them (a prompt set at a time)
and as the dense fit's per-prompt features are taken. PP's selection depends on the batch (its
probe reads some of the batch's rows), so the composition matters: on the tiny test models at
ratio 0.3, batches alternating harmful and harmless prompts moved the refitted thresholds by up
to 0.3, where pruning moved them from the dense ones by up to 2.2 (random weights: the sizes
say little about a trained model). A deployment whose batches mix kinds sees features between
the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from aapp.calibration.alignment import prompt_features, window_features
from aapp.calibration.store import Calibration, PrunedThresholds
from aapp.errors import AappError, CalibrationError, InputError
from aapp.methods.aapp.gates import refit_thresholds
from aapp.methods.plan import PrunePlan, check_ratio, make_plan
from aapp.methods.pp import ProbePruning
from aapp.models.loading import LoadedModel
from aapp.pruning.engine import PruneOptions, prune_model

BATCH_SIZE = 8


def parse_gate_ratios(text: str) -> tuple[float, ...]:
    """--gate-ratios "0.2,0.3" -> (0.2, 0.3); "" or "none" -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        ratios = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--gate-ratios {text!r}: expected comma-separated numbers, e.g. 0.2,0.3,0.4, "
                         "or 'none'") from None
    for r in ratios:
        check_ratio(r)
        if r == 0:
            raise InputError("--gate-ratios: 0 prunes nothing (the dense thresholds serve it); give ratios > 0")
    return ratios


def _plan(loaded: LoadedModel, ratio: float, options: PruneOptions) -> PrunePlan:
    return make_plan(loaded.geometry, ratio, dense_layers=options.dense_layers,
                     channel_multiple=options.channel_multiple)


def plannable(loaded: LoadedModel, ratios: Sequence[float], options: PruneOptions) -> tuple[list[float], list[str]]:
    """The ratios `aapp prune` can run on this model at these dense layers, and why each other one
    cannot (a few-layer model cannot prune 0.4 of its compute from its one pruned layer)."""
    ok, why = [], []
    for r in ratios:
        try:
            _plan(loaded, r, options)
            ok.append(r)
        except AappError as e:
            why.append(str(e))
    return ok, why


def pruned_features(loaded: LoadedModel, calib: Calibration, prompts: Sequence[str], ratio: float,
                    options: PruneOptions = PruneOptions(), batch_size: int = BATCH_SIZE,
                    on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """Per-prompt gate features [N, L, D] at every layer input, under PP's prefill at `ratio`."""
    n_post = int(calib.meta.get("post_instruction_tokens", 1))
    with prune_model(loaded, ProbePruning(), replace(options, ratio=ratio), calib):
        return prompt_features(loaded, prompts, n_post, batch_size, on_batch)


def fit_pruned_thresholds(loaded: LoadedModel, calib: Calibration, harmful: Sequence[str], harmless: Sequence[str],
                          ratios: Sequence[float], options: PruneOptions = PruneOptions(),
                          batch_size: int = BATCH_SIZE,
                          on_batch: Callable[[int], None] | None = None, prose: torch.Tensor | None = None,
                          max_fpr: float | None = None) -> PrunedThresholds:
    """Every residual gate's thresholds [R, L] at `ratios` (each > 0), from PP-pruned prefills of the
    prompts (one per ratio: harmful, then harmless, then the `prose` token windows [N, S] if given)
    at `options`' dense layers, each cut to pass at most `max_fpr` of the benign inputs. `calib`
    must hold the alignment statistics and fitted gates."""
    if not calib.has_alignment:
        raise CalibrationError("pruned gate thresholds need the alignment statistics; run `aapp calibrate` "
                               "with --harmful and --harmless (the defaults do)")
    if not harmful or not harmless:
        raise InputError("pruned gate thresholds need both harmful and harmless prompts")
    for r in ratios:
        if r <= 0:
            raise InputError(f"gate ratio {r:g} prunes nothing; the dense thresholds serve it")
        _plan(loaded, r, options)  # fails before any pass
    per_ratio = []
    for ratio in ratios:
        first_pruned = next(i for i, r in enumerate(_plan(loaded, ratio, options).layer_ratios) if r > 0)
        fh, fs = (pruned_features(loaded, calib, p, ratio, options, batch_size, on_batch) for p in (harmful, harmless))
        fp = None
        if prose is not None and len(prose):
            with prune_model(loaded, ProbePruning(), replace(options, ratio=ratio), calib):
                fp = window_features(loaded, prose, int(calib.meta.get("post_instruction_tokens", 1)), batch_size)
        per_ratio.append(refit_thresholds(fh, fs, calib.alignment, first_pruned, fp, max_fpr))
    gates = per_ratio[0].keys() if per_ratio else ()
    return PrunedThresholds(ratios=tuple(float(r) for r in ratios), dense_layers=options.dense_layers,
                            threshold={g: torch.stack([t[g] for t in per_ratio]) for g in gates}, max_fpr=max_fpr)


def add_pruned_thresholds(calib: Calibration, thresholds: PrunedThresholds) -> None:
    """Store `thresholds` in `calib` in place, merged with those it holds (see PrunedThresholds.merged)."""
    a = calib.alignment
    merged = thresholds if a.pruned is None else a.pruned.merged(thresholds)
    calib.alignment = replace(a, pruned=merged)
