"""Sweep mode of `aapp eval-refusal`: generate, judge and report every (method, ratio) cell.

    summaries = run_sweep(SweepConfig(model="qwen2.5-coder-0.5b-instruct", calib="c.safetensors",
                                      methods=("dense", "pp", "aapp"), ratios=(0.1, 0.2, 0.3),
                                      harmful="advbench", benign="xstest-safe", out="runs/sweep"))

This module runs the cells and reports them; its parts live beside it:

* sweep_config: `SweepConfig` and the parsers of its CLI values;
* sweep_plan: the cells (dense first, the reference), their batches, which rank runs
  which, what a resume runs again, stateful cells;
* sweep_log: the crash-safe `.partial` log that `resume=True` continues from;
* sweep_checks: what is checked before hours of generation.

A cell generates its batches with a fresh method and a fresh pruning handle, appending its
rows to the log as each batch finishes; with `text`, it also measures perplexity on
held-out prose. Nothing is judged or written to `out` until every cell is done; then every
cell is judged against the dense one, the outputs replace any old ones together
(`report.write_outputs` stages and renames) and `.partial` is removed.

Distributed. Under `torchrun` every rank runs this same function: all ranks load the
model and walk the cells in the same order; each generates the batches it owns (whole
batches, see aapp.evaluation.distributed, so a batch never differs from a single-process
one) and the perplexity of the cells it owns; rank 0 gathers the rows, judges and writes.
Summaries then equal a single-process run's, bar wall time (summed over ranks).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import aapp
from aapp.errors import InputError
from aapp.evaluation import distributed
from aapp.evaluation.distributed import Dist
from aapp.evaluation.metrics import CellSummary
from aapp.evaluation.sweep_checks import check_calibration_given, check_methods, check_out, check_text
from aapp.evaluation.sweep_config import DENSE, SweepConfig, parse_methods, parse_ratios, parse_ppl, split_sets, sweep_options
from aapp.evaluation.sweep_log import WorkLog, run_key
from aapp.evaluation.sweep_plan import (Cell, CellKey, batches_of, batches_to_run, is_stateful, merge_ranks,
                                        plan_batches, sweep_cells)

__all__ = ["SweepConfig", "load_sweep_prompts", "parse_methods", "parse_ppl", "parse_ratios", "run_sweep", "sweep_options"]


def run_sweep(cfg: SweepConfig, *, progress: bool = True) -> list[CellSummary]:
    """Run the sweep (see the module docstring) and return the cell summaries, dense first.

    Writes results.jsonl, summary.json, summary.csv and the plot into `cfg.out`. Progress
    bars go to stderr when `progress`. Under torchrun only rank 0 reports: the other
    ranks return [] (and show no progress).
    """
    with distributed.session(cfg.device) as dist:
        if dist.active and cfg.device_map is not None:
            raise InputError("--device-map spreads one model over several GPUs; it cannot be combined with torchrun")
        rows, ppl, meta = _generate(cfg, dist, progress and dist.is_main)
        if not dist.is_main:
            dist.barrier()
            return []
        try:
            return _report(cfg, rows, ppl, meta)
        finally:
            dist.barrier()  # the other ranks wait until the outputs are written (or failed)


def load_sweep_prompts(cfg: SweepConfig) -> list:
    """Harmful prompts (labelled harmful), then benign ones (labelled benign); ids unique across all.

    --harmful and --benign may each list several sets, comma-separated (`advbench,harmbench`);
    `limit` and `sample` apply to each set, and summaries report refusal per set too.
    """
    from aapp.prompts import load_prompts

    prompts = []
    for specs, label in ((cfg.harmful, "harmful"), (cfg.benign, "benign")):
        for spec in split_sets(specs):
            prompts += load_prompts(spec, limit=cfg.limit, sample=cfg.sample, seed=cfg.seed, label=label)
    seen: dict[str, str] = {}
    for p in prompts:
        if p.id in seen:
            raise InputError(f"prompt id {p.id!r} is in both {seen[p.id]} and {p.source}; rows are matched by id, "
                             "so give the sets distinct ids")
        seen[p.id] = p.source
    return prompts


def _generate(cfg: SweepConfig, dist: Dist, show: bool):
    """Every cell's rows (on rank 0, gathered; {} elsewhere), perplexities and the run's metadata."""
    from aapp.calibration.store import load_calibration
    from aapp.context import fit_to_context
    from aapp.evaluation.judges import check_judge
    from aapp.text import load_text

    prompts = load_sweep_prompts(cfg)
    texts = load_text(cfg.text, split="heldout") if cfg.text is not None else None
    cells = sweep_cells(cfg.methods, cfg.ratios)
    check_judge(cfg.judge)
    check_calibration_given(cfg)

    out = Path(cfg.out)
    log = WorkLog(out, dist.rank)
    dist.decide(lambda: check_out(out, log, cfg.resume))
    loaded = _load_model(cfg)
    prompts = fit_to_context(prompts, loaded.tokenizer, loaded.geometry.context_length, cfg.max_new_tokens,
                             cfg.truncate)
    calib = load_calibration(cfg.calib) if cfg.calib else None
    check_methods(cfg, cells, loaded, calib)
    if texts is not None:
        check_text(cfg, loaded, texts)
    dist.decide(lambda: log.begin(run_key(cfg, loaded, prompts, texts), cfg.resume))
    done_rows, done_ppl = log.read() if cfg.resume else ({}, {})
    dist.barrier()  # everyone has read the logs before anyone appends to them
    mine_rows: dict[CellKey, list[dict]] = {}
    mine_ppl: dict[CellKey, dict] = {}
    log.open()
    try:
        with _bars(show) as bars:
            for ci, cell in enumerate(cells):
                mine_rows[cell.key] = _run_cell(cfg, dist, ci, cell, loaded, calib, prompts,
                                                done_rows.get(cell.key, {}), log, bars)
                if texts is not None and dist.owner(ci) == dist.rank:
                    mine_ppl[cell.key] = done_ppl.get(cell.key) or _run_perplexity(cfg, cell, loaded, calib,
                                                                                     texts, log, bars)
    finally:
        log.close()
    meta = _meta(cfg, loaded, prompts, dist)
    del loaded, calib
    _free_memory()
    gathered = dist.gather((mine_rows, mine_ppl))
    if gathered is None:
        return {}, {}, meta
    return merge_ranks(cells, prompts, gathered) + (meta,)


def _run_cell(cfg, dist, ci, cell: Cell, loaded, calib, prompts, done: dict[str, dict], log: WorkLog,
              bars) -> list[dict]:
    """Generate this rank's batches of one cell that are not done; return this rank's rows of the cell."""
    from aapp.pruning.run import GenerationSettings, generate_rows

    batches = batches_of(len(prompts), cfg.batch_size)
    stateful = is_stateful(cell, cfg)
    mine = plan_batches(ci, len(batches), dist, stateful)
    run = batches_to_run(mine, batches, [p.id for p in prompts], done, stateful)
    n_mine = sum(len(batches[b]) for b in mine)
    task = bars.add_task(f"{cell.name:>10}", total=n_mine,
                         completed=n_mine - sum(len(batches[b]) for b in run)) if bars else None
    new: dict[str, dict] = {}
    if run:
        pending: list[dict] = []

        def on_batch(n: int) -> None:
            log.append_rows(pending)  # the batch's rows, flushed and fsynced together
            pending.clear()
            if bars:
                bars.advance(task, n)

        chosen = [prompts[i] for b in run for i in batches[b]]
        options = replace(cfg.prune, ratio=cell.ratio)
        settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
        # `run` is ascending and only the cell's last batch can be short, so chunking `chosen`
        # by batch_size gives back exactly these batches.
        for row in generate_rows(loaded, chosen, cfg.method(cell.method), options, calib, settings,
                                 on_batch=on_batch):
            if row["id"] not in done:
                pending.append(row)
                new[row["id"]] = row
    return [done.get(prompts[i].id) or new[prompts[i].id] for b in mine for i in batches[b]]


def _run_perplexity(cfg, cell: Cell, loaded, calib, texts, log: WorkLog, bars) -> dict:
    from aapp.evaluation.perplexity import perplexity
    from aapp.pruning.engine import prune_model

    task = bars.add_task(f"{cell.name:>10} ppl", total=1) if bars else None
    with prune_model(loaded, cfg.method(cell.method), replace(cfg.prune, ratio=cell.ratio), calib) as handle:
        res = perplexity(loaded, texts, seq_len=cfg.ppl_seq_len, max_windows=cfg.ppl_windows,
                         batch_size=cfg.batch_size, handle=handle)
    record = {"method": cell.method, "ratio": cell.ratio, **res.to_dict()}
    log.append_ppl(record)
    if bars:
        bars.advance(task, 1)
    return record


def _report(cfg: SweepConfig, rows: dict[CellKey, list[dict]], ppl: dict[CellKey, float],
            meta: dict) -> list[CellSummary]:
    """Rank 0: judge every cell against the dense one, write the outputs, drop the resume log."""
    from aapp.evaluation.judges import get_judge
    from aapp.evaluation.pipe import evaluate_generations
    from aapp.evaluation.report import write_outputs

    judge = get_judge(cfg.judge, device=cfg.device)
    dense = rows[(DENSE, 0.0)]
    others = [r for key, cell_rows in rows.items() if key != (DENSE, 0.0) for r in cell_rows]
    if others:
        judged, summaries = evaluate_generations(others, dense, judge, source="sweep",
                                                 reference_source="dense cell", perplexity=ppl)
    else:
        judged, summaries = evaluate_generations(dense, None, judge, source="sweep", perplexity=ppl)
    # Dense first, then the cells in sweep order (methods, then ratios, as given).
    order = {key: i for i, key in enumerate(rows)}
    summaries.sort(key=lambda s: order.get((s.method, s.ratio), len(order)))
    write_outputs(Path(cfg.out), judged, summaries, meta=meta)
    WorkLog(Path(cfg.out), 0).remove()
    return summaries


def _load_model(cfg: SweepConfig):
    from aapp.models.loading import load_model

    return load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, device_map=cfg.device_map)


def _meta(cfg: SweepConfig, loaded, prompts, dist: Dist) -> dict[str, Any]:
    return {
        "mode": "sweep", "aapp_version": aapp.__version__, "model": cfg.model, "fingerprint": loaded.fingerprint,
        "device": loaded.device.type, "dtype": str(loaded.dtype).removeprefix("torch."), "calib": cfg.calib,
        "harmful": cfg.harmful, "benign": cfg.benign, "limit": cfg.limit, "sample": cfg.sample, "seed": cfg.seed,
        "n_harmful": sum(p.label == "harmful" for p in prompts), "n_benign": sum(p.label == "benign" for p in prompts),
        "methods": list(cfg.methods), "ratios": list(cfg.ratios), "judge": cfg.judge,
        "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size,
        "text": cfg.text, "ppl_seq_len": cfg.ppl_seq_len if cfg.text else None,
        "ppl_windows": cfg.ppl_windows if cfg.text else None,
        "prune": cfg.prune_settings(), "aapp": asdict(cfg.aapp), "world_size": dist.world_size,
    }


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def _bars(show: bool):
    if not show:
        yield None
        return
    from aapp.console import progress

    with progress() as bars:
        yield bars
