"""Sweep mode of `aapp eval-refusal`: generate, judge and report every (method, ratio) cell.

    summaries = run_sweep(SweepConfig(model="qwen2.5-coder-0.5b-instruct", calib="c.safetensors",
                                      methods=("dense", "pp", "aapp"), ratios=(0.1, 0.2, 0.3),
                                      harmful="advbench", benign="xstest-safe", out="runs/sweep"))

Cells. Dense runs once, at ratio 0: it is the reference every other cell's refuse/comply
decisions are compared with (whether or not `methods` names it). Then every other method
runs at every ratio. A cell generates the harmful prompts (labelled harmful) followed by
the benign ones (labelled benign) in batches of `batch_size`, with a fresh method and a
fresh pruning handle; with `text`, it also measures perplexity on held-out prose.

Crash safety and resume. Rows are appended to `out/.partial/results.rank{R}.jsonl` as
each batch finishes (flushed and fsynced), perplexities to `perplexity.rank{R}.jsonl`,
beside `config.json`, the settings that decide what a row holds. `resume=True` reads
every rank's log (a torn last line from a kill is dropped) and skips each batch whose
prompts are all done; a batch that is partly done is generated again whole, because PP
picks channels per batch, and only its missing rows are appended. Nothing is judged or
written to `out` until every cell is done; then the outputs replace any old ones together
(`report.write_outputs` stages and renames) and `.partial` is removed. Without `resume`, an
`out` that holds a `.partial` is an error (InputError), never silently restarted.

Cells that carry state from batch to batch (`PruneOptions.ema_momentum`, AAPP's
`refresh`) are run whole by one process, and on resume they run again from their first
batch (regenerating, not re-logging, the finished rows), so their state is what an
uninterrupted run would have had.

Distributed. Under `torchrun` every rank runs this same function: all ranks load the
model and walk the cells in the same order; each generates the batches it owns (whole
batches, see aapp.evaluation.distributed, so a batch never differs from a single-process
one) and the perplexity of the cells it owns; rank 0 gathers the rows, judges and writes.
Summaries then equal a single-process run's, bar wall time (summed over ranks).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aapp
from aapp.errors import CalibrationError, InputError
from aapp.evaluation import distributed
from aapp.evaluation.distributed import Dist
from aapp.evaluation.metrics import CellSummary
from aapp.methods.aapp import AAPPOptions
from aapp.pruning.engine import PruneOptions

PARTIAL = ".partial"
CONFIG = "config.json"
ROWS_LOG = "results.rank{rank}.jsonl"
PPL_LOG = "perplexity.rank{rank}.jsonl"
DENSE = "dense"
ROW_FORMAT = 2  # rows carry `set` and `gate.sample_score`; a resume must not mix in older rows

CellKey = tuple[str, float]


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs; see the module docstring. `prune.ratio` is ignored (set per cell)."""

    model: str
    out: str | Path
    calib: str | None = None
    methods: tuple[str, ...] = (DENSE, "pp", "aapp")
    ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    harmful: str | None = None
    benign: str | None = None
    limit: int | None = None      # per prompt set, as load_prompts
    sample: int | None = None
    seed: int = 0
    text: str | None = None       # perplexity on this text's held-out part ('builtin' or a file)
    ppl_seq_len: int = 256
    ppl_windows: int = 32
    max_new_tokens: int = 128
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None  # e.g. "auto": spread a large model over GPUs (single process only)
    judge: str = "keyword"
    prune: PruneOptions = field(default_factory=PruneOptions)
    aapp: AAPPOptions = field(default_factory=AAPPOptions)
    resume: bool = False
    truncate: bool = False  # cut prompts too long for the context instead of leaving them out

    def __post_init__(self):
        from aapp.errors import AappError
        from aapp.methods import check_method_spec

        object.__setattr__(self, "methods", tuple(dict.fromkeys(self.methods)))
        object.__setattr__(self, "ratios", tuple(dict.fromkeys(float(r) for r in self.ratios)))
        if not self.methods:
            raise InputError("--methods: name at least one method")
        for m in self.methods:
            try:
                check_method_spec(m)
            except AappError as e:
                raise InputError(f"--methods: {e}") from None
        if any(m != DENSE for m in self.methods) and not self.ratios:
            raise InputError("--ratios: give at least one ratio for the pruned methods")
        bad = [r for r in self.ratios if not 0.0 < r < 1.0]
        if bad:
            raise InputError(f"--ratios: each must be in (0, 1), got {', '.join(f'{r:g}' for r in bad)}")
        if self.harmful is None and self.benign is None:
            raise InputError("a sweep needs prompts: give --harmful, --benign or both")
        for name in ("batch_size", "max_new_tokens", "ppl_windows"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.ppl_seq_len < 2:
            raise InputError(f"ppl_seq_len must be at least 2, got {self.ppl_seq_len}")


@dataclass(frozen=True)
class Cell:
    method: str
    ratio: float

    @property
    def key(self) -> CellKey:
        return (self.method, self.ratio)

    @property
    def name(self) -> str:
        return f"{self.method}@{self.ratio:g}"


def parse_methods(text: str) -> tuple[str, ...]:
    """--methods "dense,pp,aapp" -> ("dense", "pp", "aapp"); names are checked by SweepConfig."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_ratios(text: str) -> tuple[float, ...]:
    """--ratios "0.1,0.2" -> (0.1, 0.2); ranges are checked by SweepConfig."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--ratios {text!r}: expected comma-separated numbers, e.g. 0.1,0.2,0.3") from None


def split_sets(specs: str | None) -> list[str]:
    """'advbench,harmbench' -> ['advbench', 'harmbench']; None -> []."""
    return [part.strip() for part in (specs or "").split(",") if part.strip()]


def sweep_cells(methods: Sequence[str], ratios: Sequence[float]) -> list[Cell]:
    """Dense at ratio 0 first (the reference, always run), then each other method at each ratio."""
    return [Cell(DENSE, 0.0)] + [Cell(m, float(r)) for m in methods if m != DENSE for r in ratios]


def is_stateful(cell: Cell, cfg: SweepConfig) -> bool:
    """Whether a batch's channels depend on the batches before it (so it cannot be split or skipped)."""
    if cell.method == DENSE:
        return False
    from aapp.methods import make_method

    return cfg.prune.ema_momentum is not None or make_method(cell.method, cfg.aapp).carries_state


def batches_of(n_prompts: int, batch_size: int) -> list[range]:
    """Prompt indices of each batch; the same for every rank and every run."""
    return [range(i, min(i + batch_size, n_prompts)) for i in range(0, n_prompts, batch_size)]


def plan_batches(cell_index: int, n_batches: int, dist: Dist, stateful: bool) -> list[int]:
    """The batches of a cell this rank runs: every batch it owns, or the whole cell when stateful."""
    if stateful:
        return list(range(n_batches)) if dist.owner(cell_index) == dist.rank else []
    return [b for b in range(n_batches) if dist.owns_batch(b)]


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


# ------------------------------------------------------------------ the resume log

class WorkLog:
    """`out/.partial`: the settings of the run, and its rows and perplexities as they finish."""

    def __init__(self, out: Path, rank: int):
        self.dir = out / PARTIAL
        self.rank = rank
        self._rows = self._ppl = None

    def exists(self) -> bool:
        return self.dir.exists()

    def begin(self, key: dict[str, Any], resume: bool) -> None:
        """Check (resume) or record (fresh) the run's settings. Rank 0 only."""
        from aapp.io import atomic_write

        config = self.dir / CONFIG
        current = json.loads(json.dumps(key))
        if resume and config.is_file():
            try:
                stored = json.loads(config.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise InputError(f"{config}: unreadable ({e}); remove {self.dir} to start over") from None
            diff = [f"{k}: {stored.get(k)!r} then, {current.get(k)!r} now"
                    for k in current if stored.get(k) != current.get(k)]
            if diff:
                raise InputError(f"--resume: the unfinished sweep in {self.dir.parent} was run with other settings "
                                 f"({'; '.join(diff)}); use the same settings, or remove {self.dir}")
            return
        if any(self.dir.glob("*.rank*.jsonl")):
            raise InputError(f"{self.dir} holds rows but no {CONFIG}; remove it to start over")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(config) as f:
                json.dump(current, f, indent=2)
        except OSError as e:
            raise InputError(f"--out {self.dir.parent}: cannot write {config.name}: {e.strerror or e}") from None

    def read(self) -> tuple[dict[CellKey, dict[str, dict]], dict[CellKey, dict]]:
        """Finished rows {cell: {prompt id: row}} and perplexities {cell: result}, from every rank's log."""
        rows: dict[CellKey, dict[str, dict]] = {}
        ppl: dict[CellKey, dict] = {}
        for path in sorted(self.dir.glob(ROWS_LOG.format(rank="*"))):
            for rec in _read_log(path)[0]:
                rows.setdefault(_key_of(rec), {})[str(rec["id"])] = rec
        for path in sorted(self.dir.glob(PPL_LOG.format(rank="*"))):
            for rec in _read_log(path)[0]:
                ppl[_key_of(rec)] = rec
        return rows, ppl

    def open(self) -> None:
        """Open this rank's logs for appending, first cutting a torn last line left by a kill."""
        self.dir.mkdir(parents=True, exist_ok=True)  # a rank on another node may not share rank 0's disk
        self._rows = self._open(self.dir / ROWS_LOG.format(rank=self.rank))
        self._ppl = self._open(self.dir / PPL_LOG.format(rank=self.rank))

    @staticmethod
    def _open(path: Path):
        if path.exists():
            good = _read_log(path)[1]
            if path.stat().st_size > good:
                os.truncate(path, good)
        return open(path, "a", encoding="utf-8")

    def append_rows(self, rows: Sequence[dict]) -> None:
        self._append(self._rows, rows)

    def append_ppl(self, record: dict) -> None:
        self._append(self._ppl, [record])

    @staticmethod
    def _append(f, records: Sequence[dict]) -> None:
        from aapp.io import dumps_row

        if not records:
            return
        f.write("".join(dumps_row(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())

    def close(self) -> None:
        for f in (self._rows, self._ppl):
            if f is not None:
                f.close()
        self._rows = self._ppl = None

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _read_log(path: Path) -> tuple[list[dict], int]:
    """Records of complete lines and the byte length they span; a line without its newline is torn."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    records = []
    for lineno, line in enumerate(data[:end].split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise InputError(f"{path}:{lineno}: corrupt resume log; remove {path.parent} to start over") from None
        if not isinstance(rec, dict) or "method" not in rec or "ratio" not in rec:
            raise InputError(f"{path}:{lineno}: not a sweep record; remove {path.parent} to start over")
        records.append(rec)
    return records, end


def _key_of(rec: dict) -> CellKey:
    return (str(rec["method"]), float(rec["ratio"]))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def run_key(cfg: SweepConfig, loaded, prompts: Sequence, texts: Sequence[str] | None) -> dict[str, Any]:
    """The settings that decide what a logged row or perplexity holds: a resume must match them.

    Methods and ratios are not among them: cells are independent, so a resumed sweep may add some.
    """
    prune = asdict(cfg.prune)
    prune.pop("ratio")
    return {
        "row_format": ROW_FORMAT,
        "model": cfg.model, "fingerprint": loaded.fingerprint, "device": loaded.device.type,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "calib": _digest(Path(cfg.calib).read_bytes()) if cfg.calib else None,
        "prompts": _digest(json.dumps([[p.id, p.label, p.text] for p in prompts]).encode()),
        "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size,
        "prune": prune, "aapp": asdict(cfg.aapp),
        "text": _digest("\n\n".join(texts).encode()) if texts is not None else None,
        "ppl_seq_len": cfg.ppl_seq_len, "ppl_windows": cfg.ppl_windows,
    }


# ------------------------------------------------------------------ the run

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


def _generate(cfg: SweepConfig, dist: Dist, show: bool):
    """Every cell's rows (on rank 0, gathered; {} elsewhere), perplexities and the run's metadata."""
    from aapp.calibration.store import load_calibration
    from aapp.context import fit_to_context
    from aapp.text import load_text

    prompts = load_sweep_prompts(cfg)
    texts = load_text(cfg.text, split="heldout") if cfg.text is not None else None
    cells = sweep_cells(cfg.methods, cfg.ratios)
    _check_judge(cfg.judge)
    needs_calib = [m for m in cfg.methods if m != DENSE and _method(m, cfg).needs_calibration]
    if needs_calib and cfg.calib is None:
        raise InputError(f"--methods {','.join(needs_calib)} need --calib (make one with `aapp calibrate`)")

    out = Path(cfg.out)
    log = WorkLog(out, dist.rank)
    _decide(dist, lambda: _check_out(out, log, cfg.resume))
    loaded = _load_model(cfg)
    prompts = fit_to_context(prompts, loaded.tokenizer, loaded.geometry.context_length, cfg.max_new_tokens,
                             cfg.truncate)
    calib = load_calibration(cfg.calib) if cfg.calib else None
    _check_methods(cfg, cells, loaded, calib)
    if texts is not None:
        _check_text(cfg, loaded, texts)
    _decide(dist, lambda: log.begin(run_key(cfg, loaded, prompts, texts), cfg.resume))
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
    return _merge(cells, prompts, gathered) + (meta,)


def _run_cell(cfg, dist, ci, cell, loaded, calib, prompts, done: dict[str, dict], log: WorkLog, bars) -> list[dict]:
    """Generate this rank's batches of one cell that are not done; return this rank's rows of the cell."""
    from aapp.pruning.run import GenerationSettings, generate_rows

    batches = batches_of(len(prompts), cfg.batch_size)
    stateful = is_stateful(cell, cfg)
    mine = plan_batches(ci, len(batches), dist, stateful)
    todo = [b for b in mine if any(prompts[i].id not in done for i in batches[b])]
    # A stateful cell replays its finished batches: their state feeds the batches after them.
    run = mine[: mine.index(todo[-1]) + 1] if stateful and todo else todo
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
        for row in generate_rows(loaded, chosen, _method(cell.method, cfg), options, calib, settings,
                                 on_batch=on_batch):
            if row["id"] not in done:
                pending.append(row)
                new[row["id"]] = row
    return [done.get(prompts[i].id) or new[prompts[i].id] for b in mine for i in batches[b]]


def _run_perplexity(cfg, cell, loaded, calib, texts, log: WorkLog, bars) -> dict:
    from aapp.evaluation.perplexity import perplexity
    from aapp.pruning.engine import prune_model

    task = bars.add_task(f"{cell.name:>10} ppl", total=1) if bars else None
    with prune_model(loaded, _method(cell.method, cfg), replace(cfg.prune, ratio=cell.ratio), calib) as handle:
        res = perplexity(loaded, texts, seq_len=cfg.ppl_seq_len, max_windows=cfg.ppl_windows,
                         batch_size=cfg.batch_size, handle=handle)
    record = {"method": cell.method, "ratio": cell.ratio, **res.to_dict()}
    log.append_ppl(record)
    if bars:
        bars.advance(task, 1)
    return record


def _merge(cells: Sequence[Cell], prompts: Sequence, gathered: Sequence) -> tuple[dict, dict]:
    """Rank 0: every cell's rows in prompt order, each prompt exactly once; perplexity per cell."""
    rows: dict[CellKey, dict[str, dict]] = {c.key: {} for c in cells}
    ppl: dict[CellKey, float] = {}
    for rank, (rank_rows, rank_ppl) in enumerate(gathered):
        for key, cell_rows in rank_rows.items():
            for r in cell_rows:
                if r["id"] in rows[key]:
                    raise RuntimeError(f"rank {rank} returned prompt {r['id']!r} of cell {key} twice")
                rows[key][r["id"]] = r
        ppl.update({key: rec["ppl"] for key, rec in rank_ppl.items()})
    ordered = {}
    for c in cells:
        missing = [p.id for p in prompts if p.id not in rows[c.key]]
        if missing:
            raise RuntimeError(f"cell {c.name}: no row for {len(missing)} prompts (first {missing[0]!r})")
        ordered[c.key] = [rows[c.key][p.id] for p in prompts]
    return ordered, ppl


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


# ------------------------------------------------------------------ helpers

def _decide(dist: Dist, check: Callable[[], None]) -> None:
    """Rank 0 runs `check` (file-system state); every rank then fails, or goes on, together."""
    if not dist.is_main:
        message = dist.broadcast(None)
        if message is not None:
            raise InputError(message)
        return
    try:
        check()
    except Exception as e:
        dist.broadcast(str(e) or type(e).__name__)
        raise
    dist.broadcast(None)


def _check_out(out: Path, log: WorkLog, resume: bool) -> None:
    from aapp.evaluation.report import check_out_dir

    check_out_dir(out)
    if log.exists() and not resume:
        raise InputError(f"--out {out} holds an unfinished sweep ({log.dir}); pass --resume to continue it, "
                         "or remove the directory to start over")


def _check_judge(judge: str) -> None:
    """Fail before hours of generation, not after, on a judge that cannot load (it loads at the end)."""
    if judge != "keyword" and not (Path(judge).expanduser() / "config.json").is_file():
        raise InputError(f"--judge {judge!r}: not 'keyword' nor a local model directory with a config.json")


def _method(name: str, cfg: SweepConfig):
    from aapp.methods import make_method

    return make_method(name, cfg.aapp)


def _check_methods(cfg: SweepConfig, cells: Sequence[Cell], loaded, calib) -> None:
    """Bind every method once on the model (fingerprint, alignment statistics, gate layer...)."""
    from aapp.pruning.engine import prune_model

    for method in dict.fromkeys(c.method for c in cells):
        ratio = max(c.ratio for c in cells if c.method == method)
        try:
            prune_model(loaded, _method(method, cfg), replace(cfg.prune, ratio=ratio), calib).remove()
        except CalibrationError as e:
            raise CalibrationError(f"--methods {method}: {e}") from None


def _check_text(cfg: SweepConfig, loaded, texts: Sequence[str]) -> None:
    from aapp.calibration.run import pack_tokens

    try:
        pack_tokens(loaded.tokenizer, texts, 1, cfg.ppl_seq_len)
    except InputError:
        raise InputError(f"--text {cfg.text}: its held-out part is shorter than one perplexity window "
                         f"of {cfg.ppl_seq_len} tokens") from None


def _load_model(cfg: SweepConfig):
    from aapp.models.loading import load_model

    return load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, device_map=cfg.device_map)


def _meta(cfg: SweepConfig, loaded, prompts: Sequence, dist: Dist) -> dict[str, Any]:
    prune = asdict(cfg.prune)
    prune.pop("ratio")
    return {
        "mode": "sweep", "aapp_version": aapp.__version__, "model": cfg.model, "fingerprint": loaded.fingerprint,
        "device": loaded.device.type, "dtype": str(loaded.dtype).removeprefix("torch."), "calib": cfg.calib,
        "harmful": cfg.harmful, "benign": cfg.benign, "limit": cfg.limit, "sample": cfg.sample, "seed": cfg.seed,
        "n_harmful": sum(p.label == "harmful" for p in prompts), "n_benign": sum(p.label == "benign" for p in prompts),
        "methods": list(cfg.methods), "ratios": list(cfg.ratios), "judge": cfg.judge,
        "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size,
        "text": cfg.text, "ppl_seq_len": cfg.ppl_seq_len if cfg.text else None,
        "ppl_windows": cfg.ppl_windows if cfg.text else None,
        "prune": prune, "aapp": asdict(cfg.aapp), "world_size": dist.world_size,
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
