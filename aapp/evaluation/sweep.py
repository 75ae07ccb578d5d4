"""Sweep mode of `aapp eval-refusal`: generate, judge and report every method x ratio x prompt set cell.

    summaries = run_sweep(SweepConfig(model=ModelSettings("qwen2.5-coder-0.5b-instruct"), out="runs/sweep",
                                      prompts=PromptSettings(harmful="advbench", benign="xstest-safe"),
                                      cells=CellSettings(ratios=(0.3, 0.4), calib="c.safetensors")))

This module walks the cells and reports them; its parts live beside it:

* sweep_config: the settings, in pieces (model, prompts, cells, generation, perplexity);
* sweep_plan: the cells (dense first, the reference), their batches, which rank runs which;
* sweep_store: one file per finished cell in `out/cells`, the unit of resume;
* sweep_checks: what is checked before hours of generation.

A cell generates its set's prompts with a fresh method and a fresh pruning handle and is written
to `out/cells` when complete; with `perplexity`, each method x ratio also measures perplexity on
held-out prose. With `resume`, cells already in `out/cells` with the same settings are read, not
run. When every cell is there, every cell is judged against the dense one on the same prompts and
the outputs replace any old ones together (`report.write_outputs` stages and renames).

Distributed. Under `torchrun` every rank runs this same function: all ranks load the model and
walk the cells in the same order; each generates the batches it owns (whole batches, see
aapp.evaluation.distributed, so a batch never differs from a single-process one) and the
perplexity of the cells it owns; rank 0 gathers each cell, writes it, judges and reports.
Summaries then equal a single-process run's, bar wall time (summed over ranks).
"""

from __future__ import annotations

import gc
import json
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import aapp
from aapp.context import prompt_tokens
from aapp.errors import InputError
from aapp.evaluation import distributed
from aapp.evaluation.distributed import Dist
from aapp.evaluation.metrics import CellSummary
from aapp.evaluation.sweep_checks import check_calibration_given, check_methods, check_out, check_text
from aapp.evaluation.sweep_config import (DENSE, CellSettings, ModelSettings, PerplexitySettings, PromptSettings,
                                          SweepConfig, parse_methods, parse_ppl, parse_ratios, sweep_config)
from aapp.evaluation.sweep_plan import Cell, CellKey, batches_of, is_stateful, merge_ranks, plan_batches, sweep_cells
from aapp.evaluation.sweep_store import CellStore, digest, ppl_name, rows_name
from aapp.pruning.run import PROVENANCE, GenerationSettings

__all__ = ["CellSettings", "GenerationSettings", "ModelSettings", "PerplexitySettings", "PromptSettings",
           "SweepConfig", "load_sweep_prompts", "parse_methods", "parse_ppl", "parse_ratios", "run_sweep",
           "sweep_config"]


def run_sweep(cfg: SweepConfig, *, progress: bool = True) -> list[CellSummary]:
    """Run the sweep (see the module docstring) and return the cell summaries, dense first.

    Writes cells/, results.jsonl, summary.json, summary.csv and the plots into `cfg.out`. Progress
    bars go to stderr when `progress`. Under torchrun only rank 0 reports: the other ranks return
    [] (and show no progress).
    """
    with distributed.session(cfg.model.device) as dist:
        if dist.active and cfg.model.device_map is not None:
            raise InputError("device_map spreads one model over several GPUs; it cannot be combined with torchrun")
        rows, ppl, meta = _generate(cfg, dist, progress and dist.is_main)
        if not dist.is_main:
            dist.barrier()
            return []
        try:
            return _report(Path(cfg.out), cfg.judge, cfg.model.device, rows, ppl, meta, cfg.mix)
        finally:
            dist.barrier()  # the other ranks wait until the outputs are written (or failed)


def load_sweep_prompts(prompts: PromptSettings) -> dict:
    """{prompt set: its prompts}, harmful sets first (labelled harmful), then benign ones; ids unique across all.

    --harmful and --benign may each list several sets, comma-separated (`advbench,harmbench`), and a
    set may name its own count (`xstest-safe:250`); `limit` and `sample` apply to each set.
    """
    from aapp.prompts import load_prompts

    loaded = [(s, load_prompts(s.spec, limit=prompts.limit, sample=s.sample, seed=prompts.seed, label=s.label))
              for s in prompts.sets()]
    seen: dict[str, str] = {}
    for p in (p for _, ps in loaded for p in ps):
        if p.id in seen:
            raise InputError(f"prompt id {p.id!r} is in both {seen[p.id]} and {p.source}; rows are matched by id, "
                             "so give the sets distinct ids")
        seen[p.id] = p.source
    return dict(loaded)


def _generate(cfg: SweepConfig, dist: Dist, show: bool):
    """Every cell's rows and perplexity (on rank 0, read back from out/cells; {} elsewhere) and the run's metadata."""
    from aapp.calibration.store import load_calibration
    from aapp.context import fit_to_context
    from aapp.evaluation.judges import check_judge
    from aapp.text import load_text

    by_set = load_sweep_prompts(cfg.prompts)
    texts = load_text(cfg.perplexity.text, split="heldout") if cfg.perplexity is not None else None
    cells = sweep_cells(cfg.cells.methods, cfg.cells.ratios, list(by_set))
    check_judge(cfg.judge)
    check_calibration_given(cfg.cells)
    store = CellStore(Path(cfg.out))
    dist.decide(lambda: check_out(Path(cfg.out), store, cfg.resume))
    loaded = _load_model(cfg.model)
    by_set = {s: fit_to_context(ps, loaded.tokenizer, loaded.geometry.context_length,
                                cfg.generation.max_new_tokens, cfg.prompts.truncate) for s, ps in by_set.items()}
    calib = load_calibration(cfg.cells.calib) if cfg.cells.calib else None
    check_methods(cfg.cells, cells, loaded, calib)
    if texts is not None:
        check_text(cfg.perplexity, loaded, texts)
    units = _Units(cfg, loaded, by_set, texts)
    grid = list(dict.fromkeys(c.key for c in cells))
    waves = _Waves(dist, store)
    with _bars(show) as bars:
        for cell in cells:
            unit = units.cell(cell)
            if _done(dist, store, *unit):
                continue
            prompts = by_set[cell.set]
            batches = _batches(prompts, loaded.tokenizer, cfg.generation)
            stateful = is_stateful(cell.method, cfg.cells)
            mine = plan_batches(waves.next, len(batches), dist, stateful)
            rows = _cell_rows(loaded, calib, cfg.cells, cfg.generation, cell, prompts, [batches[b] for b in mine],
                              bars)
            if stateful:
                waves.add(unit, rows, prompts, cell.name)
            else:
                gathered = dist.gather(rows)
                if gathered is not None:
                    store.save(*unit, merge_ranks(prompts, gathered, cell.name))
        for key in grid if texts is not None else []:
            unit = units.ppl(key)
            if _done(dist, store, *unit):
                continue
            mine = dist.owner(waves.next) == dist.rank
            waves.add(unit, [_perplexity(loaded, calib, cfg.cells, cfg.perplexity, cfg.generation.batch_size, key,
                                         texts, bars)] if mine else [])
        waves.flush()
    meta = _meta(cfg, loaded, by_set, dist)
    del loaded, calib
    _free_memory()
    if not dist.is_main:
        return {}, {}, meta
    rows: dict[CellKey, list[dict]] = {}
    for cell in cells:
        rows.setdefault(cell.key, []).extend(store.load(*units.cell(cell)))
    ppl = {key: store.load(*units.ppl(key))[0]["ppl"] for key in grid} if texts is not None else {}
    return rows, ppl, meta


class _Units:
    """The file name and the identity of each unit of work: the settings that decide what it holds.

    Dense is the plain model (the engine's dense path is exact), so its identity leaves out the
    calibration file and the pruning and method settings: a sweep that changes those still reuses
    the dense cells.
    """

    def __init__(self, cfg: SweepConfig, loaded, by_set: dict, texts):
        self.by_set = by_set
        self.model = {"model": cfg.model.model, "fingerprint": loaded.fingerprint, "device": loaded.device.type,
                      "dtype": str(loaded.dtype).removeprefix("torch.")}
        self.cells = cfg.cells
        self.calib = digest(Path(cfg.cells.calib).read_bytes()) if cfg.cells.calib else None
        self.generation = asdict(cfg.generation)
        self.perplexity = None if texts is None else {
            **asdict(cfg.perplexity), "text": digest("\n\n".join(texts).encode()),
            "batch_size": cfg.generation.batch_size}

    def _method(self, method: str, ratio: float) -> dict[str, Any]:
        pruning = {} if method == DENSE else {"calib": self.calib, **self.cells.settings(method)}
        return {**self.model, **pruning, "method": method, "ratio": ratio}

    def cell(self, cell: Cell) -> tuple[str, dict[str, Any]]:
        prompts = json.dumps([[p.id, p.label, p.text] for p in self.by_set[cell.set]]).encode()
        return rows_name(cell.method, cell.ratio, cell.set.spec), {
            **self._method(cell.method, cell.ratio), **self.generation, "prompts": digest(prompts)}

    def ppl(self, key: CellKey) -> tuple[str, dict[str, Any]]:
        return ppl_name(*key), {**self._method(*key), **self.perplexity}


def _done(dist: Dist, store: CellStore, name: str, settings: dict) -> bool:
    """Rank 0 reads the store (a unit present with other settings fails every rank); every rank learns the answer."""
    found = []
    dist.decide(lambda: found.append(store.load(name, settings) is not None))
    return dist.broadcast(found[0] if found else None)


class _Waves:
    """Indivisible units (a stateful cell, a perplexity pass), one rank each, gathered a wave at a time.

    The k-th such unit runs on rank k % world_size, and a wave holds one unit per rank, so the
    ranks run them side by side; rank 0 writes a wave's units when it ends. Every rank adds every
    unit, in the same order (with no records where it does not own the unit).
    """

    def __init__(self, dist: Dist, store: CellStore):
        self.dist, self.store = dist, store
        self.next = 0  # the index of the next unit: its owner is dist.owner(next)
        self._wave: list[tuple] = []

    def add(self, unit: tuple[str, dict], records: list[dict], prompts=None, what: str = "") -> None:
        self._wave.append((unit, records, prompts, what))
        self.next += 1
        if len(self._wave) == self.dist.world_size:
            self.flush()

    def flush(self) -> None:
        if not self._wave:
            return
        gathered = self.dist.gather([records for _, records, _, _ in self._wave])
        if gathered is not None:
            for i, (unit, _, prompts, what) in enumerate(self._wave):
                parts = [rank_records[i] for rank_records in gathered]
                self.store.save(*unit, merge_ranks(prompts, parts, what) if prompts is not None
                                else [r for part in parts for r in part])
        self._wave = []


def _batches(prompts, tokenizer, generation: GenerationSettings) -> list[list[int]]:
    """A cell's batches as prompt indices, the same on every rank and in every run; by length when asked
    (stable: batches of similar length pad less)."""
    order = list(range(len(prompts)))
    if generation.sort_by_length:  # by the tokens the model reads, as generate_rows sorts
        lengths = [prompt_tokens(tokenizer, p.input) for p in prompts]
        order.sort(key=lengths.__getitem__)
    return [[order[i] for i in b] for b in batches_of(len(order), generation.batch_size)]


def _cell_rows(loaded, calib, cells: CellSettings, generation: GenerationSettings, cell: Cell, prompts,
               batches: list[list[int]], bars) -> list[dict]:
    """Generate some whole batches of one cell (this rank's), with a fresh method and pruning handle."""
    from aapp.pruning.run import generate_rows

    chosen = [prompts[i] for b in batches for i in b]
    if not chosen:
        return []
    task = bars.add_task(f"{cell.name:>10}", total=len(chosen)) if bars else None
    # `chosen` is whole batches in order, so generate_rows, chunking it by batch_size, gives back
    # exactly these batches (only a cell's last batch can be short, and it comes last).
    rows = generate_rows(loaded, chosen, cells.method(cell.method), cells.prune_options(cell.method, cell.ratio), calib,
                         replace(generation, sort_by_length=False),
                         on_batch=lambda n: bars.advance(task, n) if bars else None)
    return _ran_with(rows, generation)


def _ran_with(rows, generation: GenerationSettings) -> list[dict]:
    """The rows, their provenance saying the generation settings the cell ran with: its batches were
    formed by `_batches`, sorted by length when asked, as `aapp prune` with these settings forms them
    over the cell's prompts (not by generate_rows, told not to sort what came sorted)."""
    out, provenance = [], None
    for row in rows:
        if provenance is None:
            p = row[PROVENANCE]
            provenance = {**p, "options": {**p["options"], "generation": asdict(generation)}}
        out.append({**row, PROVENANCE: provenance})
    return out


def _perplexity(loaded, calib, cells: CellSettings, ppl: PerplexitySettings, batch_size: int, key: CellKey, texts,
                bars) -> dict:
    from aapp.evaluation.perplexity import perplexity
    from aapp.pruning.engine import prune_model

    task = bars.add_task(f"{key[0]}@{key[1]:g} ppl", total=1) if bars else None
    with prune_model(loaded, cells.method(key[0]), cells.prune_options(key[0], key[1]), calib) as handle:
        res = perplexity(loaded, texts, seq_len=ppl.seq_len, max_windows=ppl.windows, batch_size=batch_size,
                         handle=handle)
    if bars:
        bars.advance(task, 1)
    return {"method": key[0], "ratio": key[1], **res.to_dict()}


def _report(out: Path, judge_name: str, device: str, rows: dict[CellKey, list[dict]], ppl: dict[CellKey, float],
            meta: dict, mix) -> list[CellSummary]:
    """Rank 0: judge every cell against the dense one and write the outputs."""
    from aapp.evaluation.judges import get_judge
    from aapp.evaluation.pipe import evaluate_generations
    from aapp.evaluation.report import write_outputs

    judge = get_judge(judge_name, device=device)
    dense = rows[(DENSE, 0.0)]
    others = [r for key, cell_rows in rows.items() if key != (DENSE, 0.0) for r in cell_rows]
    if others:
        judged, summaries = evaluate_generations(others, dense, judge, source="sweep",
                                                 reference_source="dense cell", perplexity=ppl, mix=mix)
    else:
        judged, summaries = evaluate_generations(dense, None, judge, source="sweep", perplexity=ppl, mix=mix)
    # Dense first, then the cells in sweep order (methods, then ratios, as given).
    order = {key: i for i, key in enumerate(rows)}
    summaries.sort(key=lambda s: order.get((s.method, s.ratio), len(order)))
    write_outputs(out, judged, summaries, meta=meta)
    return summaries


def _load_model(model: ModelSettings):
    from aapp.models.loading import load_model

    return load_model(model.model, device=model.device, dtype=model.dtype, device_map=model.device_map)


def _meta(cfg: SweepConfig, loaded, by_set: dict, dist: Dist) -> dict[str, Any]:
    prompts = [p for ps in by_set.values() for p in ps]
    return {
        "mode": "sweep", "aapp_version": aapp.__version__, "model": cfg.model.model,
        "fingerprint": loaded.fingerprint, "device": loaded.device.type,
        "dtype": str(loaded.dtype).removeprefix("torch."), "calib": cfg.cells.calib,
        **asdict(cfg.prompts), "n_harmful": sum(p.label == "harmful" for p in prompts),
        "n_benign": sum(p.label == "benign" for p in prompts),
        "methods": list(cfg.cells.methods), "ratios": list(cfg.cells.ratios), "judge": cfg.judge,
        **asdict(cfg.generation),
        "text": cfg.perplexity.text if cfg.perplexity else None,
        "ppl_seq_len": cfg.perplexity.seq_len if cfg.perplexity else None,
        "ppl_windows": cfg.perplexity.windows if cfg.perplexity else None,
        "options": {k: cfg.cells.options[k] for k in sorted(cfg.cells.options)}, "world_size": dist.world_size,
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
