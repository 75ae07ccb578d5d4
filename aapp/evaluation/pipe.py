"""Pipe mode of `aapp eval-refusal`: judge generation rows, compare with a dense reference.

Input rows are what `aapp prune` writes (or any tool, given `prompt` and `completion`):
{"id", "prompt", "label": "harmful"|"benign"|null, "completion", "method", "ratio",
 "flops": {"dense", "pruned", "probe", "bias", "recompute"}, "latency_s", and the method's own facts (read
 through aapp.methods.read_row_report)}; only
`prompt` and `completion` are required. `aapp prune`'s rows also record what made them
("provenance": model name and fingerprint, method, ratio, options, versions), which is how a
reference from another model is told apart (`evaluate_pipe`). Rows are grouped into cells by
(method, ratio); rows without a method form one cell named "model" (a reference without one:
"dense").

Matching to the reference: by `id` when every row of the cell and of the reference has
one (the prompts of a matched pair must then be equal), else by exact `prompt` text. Keys
must be unique on both sides, and every prompt of a cell must be in the reference; the
reference may hold more prompts than a cell (agreement is then over the cell's prompts).
The reference must hold a single cell.

Paired tests: at each ratio where the baseline method (`pp` unless told otherwise) ran, every
other cell gets an exact McNemar test against it over the harmful prompts both answered, so a
difference in refusal (or FAR) comes with how likely chance alone would make it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from numbers import Real
from typing import Any

from aapp.console import warn
from aapp.errors import InputError
from aapp.evaluation.cost import estimated_seconds
from aapp.evaluation.judges import Judge, KeywordJudge, Verdict
from aapp.evaluation.metrics import (DEFAULT_MIX, HARMFUL, LABELS, CellSummary, at_equal_cost, label_gaps, paired_test,
                                     summarize)
from aapp.methods import read_row_report
from aapp.provenance import versions

CellKey = tuple[str, float | None]
DEFAULT_METHOD, REFERENCE_METHOD = "model", "dense"
BASELINE = "pp"  # the method every other pruned cell is tested against, at the same ratio


PROVENANCE = "provenance"  # what `aapp prune` records in every row (aapp.pruning.run.run_provenance)


def evaluate_pipe(
    rows: Sequence[Mapping[str, Any]],
    reference_rows: Sequence[Mapping[str, Any]] | None = None,
    judge: Judge | None = None,
    *,
    source: str = "generations",
    reference_source: str = "reference",
    allow_model_mismatch: bool = False,
    allow_generation_mismatch: bool = False,
    mix: Mapping[str, float] = DEFAULT_MIX,
) -> tuple[list[dict[str, Any]], list[CellSummary], dict[str, Any]]:
    """Pipe mode whole: the model and generation checks, `evaluate_generations`, and the summary's meta.

    A reference made by another model (its rows' fingerprint differs) is refused unless
    `allow_model_mismatch`, and one generated otherwise (`GENERATION_KEYS`) unless
    `allow_generation_mismatch`; rows without provenance (from before aapp recorded it, or from
    another tool) cannot be checked and are compared with a warning. A rate that no row can
    define (no harmful or no benign rows) is said on stderr. Returns (judged, summaries, meta).
    """
    judge = judge or KeywordJudge()
    if reference_rows is not None:
        check_same_model(rows, reference_rows, allow_model_mismatch, source, reference_source)
        check_same_generation(rows, reference_rows, allow_generation_mismatch, source, reference_source)
    judged, summaries = evaluate_generations(rows, reference_rows, judge, source=source,
                                             reference_source=reference_source, mix=mix)
    for gap in label_gaps(summaries):
        warn(gap)
    return judged, summaries, pipe_meta(rows, reference_rows, judge.name)


def runs_of(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The distinct provenance records of `rows`, in order of appearance (rows without one add none)."""
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        prov = row.get(PROVENANCE)
        if isinstance(prov, Mapping):
            seen.setdefault(json.dumps(prov, sort_keys=True), dict(prov))
    return list(seen.values())


def _models(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """{fingerprint: model name} over the rows that record one."""
    out: dict[str, str] = {}
    for run in runs_of(rows):
        model = run.get("model") or {}
        if model.get("fingerprint"):
            out.setdefault(model["fingerprint"], model.get("name"))
    return out


class ModelMismatch(InputError):
    """Generations and their reference come from different models; `allow_mismatch` compares them anyway."""


def check_same_model(rows, reference_rows, allow_mismatch: bool, source: str, reference_source: str) -> None:
    """Generations and reference come from one model (by fingerprint); InputError in one line if not."""
    mine, ref = _models(rows), _models(reference_rows)
    untracked = [name for name, rs in ((source, rows), (reference_source, reference_rows))
                 if any(not isinstance(r.get(PROVENANCE), Mapping) for r in rs)]
    if untracked:
        warn(f"cannot check that {source} and {reference_source} come from one model: rows of "
             f"{' and '.join(untracked)} record no provenance (written before aapp kept it, or by another tool)")
    other = [(fp, name) for fp, name in mine.items() if ref and fp not in ref]
    if not other:
        return
    (fp, name), (ref_fp, ref_name) = other[0], next(iter(ref.items()))
    what = (f"{source} was made by model {name!r} (fingerprint {fp}), {reference_source} by {ref_name!r} "
            f"(fingerprint {ref_fp})")
    if not allow_mismatch:
        raise ModelMismatch(f"{what}; compare generations of one model")
    warn(f"{what}; compared as asked (allow_mismatch)")


# The generation settings whose difference changes what a judge reads of a row: a reference made with
# 4 new tokens cannot show a refusal that comes at the 8th. Batching (batch_size, sort_by_length) is
# left out: the reference's batches do not change what is compared with it.
GENERATION_KEYS = ("max_new_tokens",)


class GenerationMismatch(InputError):
    """Generations and their reference were generated with other settings; `allow_mismatch` compares them anyway."""


def _generation(rows) -> dict[str, set]:
    """{setting: the values the rows' provenance records} for GENERATION_KEYS."""
    out: dict[str, set] = {k: set() for k in GENERATION_KEYS}
    for run in runs_of(rows):
        generation = (run.get("options") or {}).get("generation") or {}
        for k in GENERATION_KEYS:
            if k in generation:
                out[k].add(generation[k])
    return out


def check_same_generation(rows, reference_rows, allow_mismatch: bool, source: str, reference_source: str) -> None:
    """Generations and reference were generated with the same GENERATION_KEYS, as their provenance says;
    GenerationMismatch in one line if not (rows without provenance are warned of by check_same_model)."""
    mine, ref = _generation(rows), _generation(reference_rows)
    for key in GENERATION_KEYS:
        if mine[key] and ref[key] and mine[key] != ref[key]:
            what = (f"{source} was generated with {key}={_values(mine[key])}, {reference_source} with "
                    f"{key}={_values(ref[key])}")
            if not allow_mismatch:
                raise GenerationMismatch(f"{what}; generate both alike")
            warn(f"{what}; compared as asked (allow_mismatch)")


def _values(values: set) -> str:
    return ",".join(map(str, sorted(values, key=str)))


def judge_files(generations: str | None, reference: str | None, judge: str = "keyword", out: str | None = None, *,
                mix: Mapping[str, float] = DEFAULT_MIX, allow_model_mismatch: bool = False,
                allow_generation_mismatch: bool = False) -> list[CellSummary]:
    """Pipe mode from files: judge the rows of `generations` (JSONL; None or '-': stdin) against `reference`,
    write the outputs into `out` when given, and return the summaries (see `evaluate_pipe`)."""
    from aapp.evaluation.judges import get_judge
    from aapp.evaluation.report import check_out_dir, write_outputs
    from aapp.io import read_jsonl

    if out is not None:
        check_out_dir(out)
    rows = read_jsonl(generations)
    ref = read_jsonl(reference) if reference else None
    judged, summaries, meta = evaluate_pipe(rows, ref, get_judge(judge), source=generations or "<stdin>",
                                            reference_source=reference or "reference",
                                            allow_model_mismatch=allow_model_mismatch,
                                            allow_generation_mismatch=allow_generation_mismatch, mix=mix)
    if out is not None:
        write_outputs(out, judged, summaries, meta=meta)
    return summaries


def pipe_meta(rows, reference_rows, judge_name: str) -> dict[str, Any]:
    """A pipe-mode summary's "meta": the runs that made the rows (model identity, method, ratio, options,
    their versions), the reference's, the judge, and the versions this evaluation ran with."""
    models = [{"name": name, "fingerprint": fp} for fp, name in _models(rows).items()]
    return {
        "mode": "pipe", "judge": judge_name, "versions": versions(),
        "model": models[0] if len(models) == 1 else None,  # several: see "runs"
        "runs": runs_of(rows),
        "reference": runs_of(reference_rows) if reference_rows is not None else None,
        "rows_without_provenance": sum(not isinstance(r.get(PROVENANCE), Mapping) for r in rows),
    }


def evaluate_generations(
    rows: Sequence[Mapping[str, Any]],
    reference_rows: Sequence[Mapping[str, Any]] | None = None,
    judge: Judge | None = None,
    *,
    source: str = "generations",
    reference_source: str = "reference",
    perplexity: Mapping[CellKey, float] | None = None,
    baseline: str | None = BASELINE,
    mix: Mapping[str, float] = DEFAULT_MIX,
) -> tuple[list[dict[str, Any]], list[CellSummary]]:
    """Judge every row, summarise every (method, ratio) cell; with a reference, add agreement.

    Returns (judged rows, summaries). Judged rows are the input rows plus `refused`, `judge`,
    `judge_score`, `judge_reason` and, with a reference, `dense_refused`; the reference's own
    rows come first when its cell is not already among the generations, and so does its
    summary (without agreement: it would agree with itself). `source` and
    `reference_source` name the inputs in error messages (e.g. the file paths). Summaries
    are sorted by method, then ratio; each reports its average FLOPs over the traffic `mix`. Every
    other cell at a ratio where `baseline` (a method name) also ran is tested against it on the
    harmful prompts both answered (`paired`), and, where its mix cost lies on the baseline's line to
    the dense cell, carries the baseline's refusal at that cost (`at_equal_cost`).
    """
    judge = judge or KeywordJudge()
    perplexity = perplexity or {}
    cells = _cells(rows, source, DEFAULT_METHOD)
    verdicts = _judge_rows(judge, rows, source)

    ref_cell: CellKey | None = None
    ref_refused: dict[Any, bool] = {}
    judged: list[dict[str, Any]] = []
    summaries: list[CellSummary] = []
    if reference_rows is not None:
        ref_cells = _cells(reference_rows, reference_source, REFERENCE_METHOD)
        if len(ref_cells) != 1:
            names = ", ".join(_cell_name(k) for k in ref_cells)
            raise InputError(f"{reference_source}: holds {len(ref_cells)} cells ({names}); pass one dense run")
        (ref_cell, ref_idx), = ref_cells.items()
        ref_verdicts = _judge_rows(judge, reference_rows, reference_source)
        if ref_cell not in cells:
            judged += [_judged(reference_rows[i], ref_verdicts[i], judge.name) for i in ref_idx]
            summaries.append(_summary(ref_cell, reference_rows, ref_idx, ref_verdicts, judge.name, None,
                                      perplexity.get(ref_cell), mix))
    dense_by_cell: dict[CellKey, list[bool] | None] = {}
    for key, idx in cells.items():
        if reference_rows is None:
            dense_by_cell[key] = None
            continue
        by_id = all(rows[i].get("id") is not None for i in idx) and all(
            r.get("id") is not None for r in reference_rows)
        ref_keys = _unique_keys(reference_rows, range(len(reference_rows)), by_id, reference_source, ref_cell)
        ref_refused = {k: ref_verdicts[i].refused for k, i in ref_keys.items()}
        keys = _unique_keys(rows, idx, by_id, source, key)
        missing = [k for k in keys if k not in ref_refused]
        if missing:
            raise InputError(
                f"{reference_source} does not cover {len(missing)} of {len(keys)} prompts of cell "
                f"{_cell_name(key)} in {source} (matched by {'id' if by_id else 'prompt'}); "
                f"first missing: {_short(missing[0])}"
            )
        if by_id:
            for k, i in keys.items():
                ref_row = reference_rows[ref_keys[k]]
                if rows[i]["prompt"] != ref_row["prompt"]:
                    raise InputError(f"{source}: row {i + 1}: id {k!r} has another prompt in {reference_source}")
                if rows[i].get("messages") != ref_row.get("messages"):  # the same last turn, another conversation
                    raise InputError(f"{source}: row {i + 1}: id {k!r} has other messages in {reference_source}")
        dense_by_cell[key] = [ref_refused[k] for k in keys]
    for key, idx in cells.items():
        dense = dense_by_cell[key]
        summaries.append(_summary(key, rows, idx, verdicts, judge.name, dense, perplexity.get(key), mix))
        for n, i in enumerate(idx):
            extra = {"dense_refused": dense[n]} if dense is not None else {}
            judged.append(_judged(rows[i], verdicts[i], judge.name) | extra)
    if baseline is not None:
        summaries = _paired_with(baseline, summaries, cells, rows, verdicts)
        summaries = at_equal_cost(baseline, REFERENCE_METHOD, summaries)
    summaries.sort(key=lambda s: (s.method, -1.0 if s.ratio is None else s.ratio))
    return judged, summaries


def _paired_with(baseline: str, summaries: list[CellSummary], cells: Mapping[CellKey, list[int]],
                 rows: Sequence[Mapping[str, Any]], verdicts: Sequence[Verdict]) -> list[CellSummary]:
    """Each cell's McNemar test against the baseline cell at its ratio, on harmful prompts by id (or text)."""
    def harmful(key):
        return {rows[i].get("id") or rows[i]["prompt"]: verdicts[i].refused
                for i in cells[key] if rows[i].get("label") == HARMFUL}

    out = []
    for s in summaries:
        base_key = (baseline, s.ratio)
        if s.method != baseline and s.ratio is not None and base_key in cells and (s.method, s.ratio) in cells:
            mine, base = harmful((s.method, s.ratio)), harmful(base_key)
            shared = [k for k in mine if k in base]
            if shared:
                s = replace(s, paired=paired_test(baseline, [mine[k] for k in shared], [base[k] for k in shared]))
        out.append(s)
    return out


def _cells(rows: Sequence[Mapping[str, Any]], source: str, default_method: str) -> dict[CellKey, list[int]]:
    """Validate rows and group their indices by (method, ratio), in order of appearance."""
    if not rows:
        raise InputError(f"{source}: no generations (empty input)")
    cells: dict[CellKey, list[int]] = {}
    for i, row in enumerate(rows):
        _check_row(row, f"{source}: row {i + 1}")
        method = row.get("method") or default_method
        ratio = row.get("ratio")
        cells.setdefault((method, None if ratio is None else float(ratio)), []).append(i)
    return cells


def _check_row(row: Mapping[str, Any], where: str) -> None:
    for field in ("prompt", "completion"):
        if field not in row:
            raise InputError(f"{where}: no {field!r} field")
        if not isinstance(row[field], str):
            raise InputError(f"{where}: {field!r} must be a string, got {type(row[field]).__name__}")
    label = row.get("label")
    if label is not None and label not in LABELS:
        raise InputError(f"{where}: label must be one of {', '.join(LABELS)} or null, got {label!r}")
    if not isinstance(row.get("method", ""), (str, type(None))):
        raise InputError(f"{where}: 'method' must be a string")
    for field in ("ratio", "latency_s"):
        value = row.get(field)
        if value is not None and not _is_number(value):
            raise InputError(f"{where}: {field!r} must be a number, got {value!r}")
    if not isinstance(row.get("set", ""), (str, type(None))):
        raise InputError(f"{where}: 'set' must be a string (the prompt set's name)")
    read_row_report(row, where)  # the run's fields (flops, the method's facts), checked where they are defined


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _judge_rows(judge: Judge, rows: Sequence[Mapping[str, Any]], source: str) -> list[Verdict]:
    verdicts = judge.judge([r["prompt"] for r in rows], [r["completion"] for r in rows])
    if len(verdicts) != len(rows):
        raise RuntimeError(f"judge {judge.name} returned {len(verdicts)} verdicts for {len(rows)} rows of {source}")
    return verdicts


def _unique_keys(rows, idx, by_id: bool, source: str, cell: CellKey | None) -> dict[Any, int]:
    keys: dict[Any, int] = {}
    field = "id" if by_id else "prompt"
    for i in idx:
        k = rows[i][field]
        if k in keys:
            raise InputError(
                f"{source}: rows {keys[k] + 1} and {i + 1} of cell {_cell_name(cell)} share the {field} "
                f"{_short(k)}; cannot match them to the reference"
            )
        keys[k] = i
    return keys


def _summary(key: CellKey, rows, idx, verdicts, judge_name, dense, ppl, mix) -> CellSummary:
    cell_rows = [rows[i] for i in idx]
    latencies = [r.get("latency_s") for r in cell_rows]
    flops = [r.get("flops") for r in cell_rows]
    facts = [read_row_report(r).facts for r in cell_rows]
    gates = [f.fired for f in facts if f is not None]
    scores = [f.score if f is not None else None for f in facts]
    return summarize(
        key[0], key[1],
        [verdicts[i].refused for i in idx],
        [r.get("label") for r in cell_rows],
        judge=judge_name,
        dense_refused=dense,
        # A cell's cost is reported only when every row carries it: a partial sum would mislead.
        flops=flops if all(f is not None for f in flops) else None,
        wall_time_s=sum(latencies) if all(t is not None for t in latencies) else None,
        gate_fired=gates or None,
        perplexity=ppl,
        sets=[r.get("set") for r in cell_rows],
        gate_scores=scores if any(sc is not None for sc in scores) else None,
        mix=mix,
        est_seconds=[estimated_seconds(r) for r in cell_rows],
        decode_bytes=[_read_bytes(r) for r in cell_rows],
    )


def _read_bytes(row: Mapping[str, Any]) -> float | None:
    reads = row.get("decode_bytes") or {}
    return None if reads.get("weights") is None else reads["weights"] + reads["kv"]


def _judged(row: Mapping[str, Any], v: Verdict, judge_name: str) -> dict[str, Any]:
    return dict(row) | {"refused": v.refused, "judge": judge_name, "judge_score": v.score, "judge_reason": v.reason}


def _cell_name(key: CellKey | None) -> str:
    if key is None:
        return "?"
    return key[0] if key[1] is None else f"{key[0]}@{key[1]:g}"


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
