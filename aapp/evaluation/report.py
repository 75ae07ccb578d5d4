"""Summaries out: summary.json, summary.csv, results.jsonl, the plot, and a table on stderr.

`write_outputs` renders every file in memory first and then commits them together, so
an existing output directory is never left holding a mix of old and new files.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aapp.console import console as default_console
from aapp.errors import InputError
from aapp.evaluation.metrics import CellSummary, Rate
from aapp.io import check_dir_writable, dumps_row, write_files

RESULTS, SUMMARY_JSON, SUMMARY_CSV, PLOT = "results.jsonl", "summary.json", "summary.csv", "refusal_vs_ratio.png"
PARETO = "refusal_vs_perplexity.png"  # written when cells have a perplexity (a sweep with --text)
COST_PLOT = "refusal_vs_flops.png"  # written when cells have FLOPs: rates against average FLOPs on the mix

_RATES = ("refusal_rate", "over_refusal", "overall_refusal")
_AGREEMENT_RATES = ("accuracy", "far", "frr")
CSV_COLUMNS = (
    "method", "ratio", "judge", "n", "n_harmful",
    "refusal_rate", "refusal_rate_lo", "refusal_rate_hi",
    "n_benign", "over_refusal", "over_refusal_lo", "over_refusal_hi",
    "overall_refusal", "overall_refusal_lo", "overall_refusal_hi",
    "n_agreement", "accuracy", "accuracy_lo", "accuracy_hi", "f1",
    "far", "far_lo", "far_hi", "frr", "frr_lo", "frr_hi", "far_harmful", "far_harmful_lo", "far_harmful_hi",
    "flops_fraction", "mix_flops", "wall_time_s", "gate_fire_rate", "gate_fire_rate_lo", "gate_fire_rate_hi",
    "gate_fire_harmful", "gate_fire_benign", "gate_auroc", "perplexity",
    "paired_baseline", "paired_gained", "paired_lost", "paired_p", "baseline_refusal_at_mix_flops",
)


def summary_document(summaries: Sequence[CellSummary], meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What summary.json holds (and what `--json` prints): {"meta": ..., "cells": [...]}."""
    return {"meta": dict(meta or {}), "cells": [s.to_dict() for s in summaries]}


def summary_json(summaries: Sequence[CellSummary], meta: Mapping[str, Any] | None = None) -> str:
    # allow_nan=False: a NaN that slipped in fails here rather than in a reader's parser.
    return json.dumps(summary_document(summaries, meta), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def _rate_cols(name: str, rate: Rate | None) -> dict[str, Any]:
    ci = rate.ci if rate else None
    lo, hi = ci if ci else (None, None)
    return {name: rate.value if rate else None, f"{name}_lo": lo, f"{name}_hi": hi}


def flat_row(s: CellSummary) -> dict[str, Any]:
    """One CSV row per cell: every rate as value, lo, hi; undefined values stay None."""
    row: dict[str, Any] = {"method": s.method, "ratio": s.ratio, "judge": s.judge, "n": s.n,
                           "n_harmful": s.n_harmful, "n_benign": s.n_benign}
    for name in _RATES:
        row |= _rate_cols(name, getattr(s, name))
    a = s.agreement
    row["n_agreement"] = a.n if a else None
    for name in _AGREEMENT_RATES:
        row |= _rate_cols(name, getattr(a, name) if a else None)
    row["f1"] = a.f1 if a else None
    row |= _rate_cols("far_harmful", s.harmful_agreement.far if s.harmful_agreement else None)
    row |= _rate_cols("gate_fire_rate", s.gate_fire_rate)
    for label in ("harmful", "benign"):
        rate = s.gate_fire_by_label.get(label)
        row[f"gate_fire_{label}"] = rate.value if rate else None
    row["gate_auroc"] = s.gate_auroc
    row |= {"flops_fraction": s.flops_fraction, "mix_flops": s.mix_flops, "wall_time_s": s.wall_time_s,
            "perplexity": s.perplexity}
    p = s.paired
    row |= {"paired_baseline": p.baseline if p else None, "paired_gained": p.gained if p else None,
            "paired_lost": p.lost if p else None, "paired_p": p.p if p else None}
    row["baseline_refusal_at_mix_flops"] = s.at_equal_cost.refusal_rate if s.at_equal_cost else None
    return {c: row[c] for c in CSV_COLUMNS}


def summary_csv(summaries: Sequence[CellSummary]) -> str:
    """CSV with `CSV_COLUMNS`; an undefined value is an empty field."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for s in summaries:
        writer.writerow({k: "" if v is None else v for k, v in flat_row(s).items()})
    return buf.getvalue()


def write_summary(summaries: Sequence[CellSummary], out_dir: str | Path, meta: Mapping[str, Any] | None = None) -> None:
    """summary.json and summary.csv in `out_dir`, replacing the old pair together."""
    write_files(out_dir, {SUMMARY_JSON: summary_json(summaries, meta).encode(),
                          SUMMARY_CSV: summary_csv(summaries).encode()})


def check_out_dir(out_dir: str | Path) -> Path:
    """Fail before any work when `out_dir` cannot hold the outputs (InputError). Creates nothing."""
    return check_dir_writable(out_dir, "--out")


def write_outputs(
    out_dir: str | Path,
    results: Sequence[Mapping[str, Any]],
    summaries: Sequence[CellSummary],
    *,
    meta: Mapping[str, Any] | None = None,
    plot: bool = True,
) -> dict[str, Path]:
    """Write results.jsonl, summary.json, summary.csv and (when `plot`) the PNGs into `out_dir`.

    Everything is rendered first and then committed together (`aapp.io.write_files`): a
    failure at any step leaves earlier files as they were. Other files in `out_dir` are
    left alone. Returns {file name: path}.
    """
    from aapp.evaluation.plot import render_cost_png, render_pareto_png, render_png

    out = check_out_dir(out_dir)
    files: dict[str, bytes] = {
        RESULTS: "".join(dumps_row(dict(r)) + "\n" for r in results).encode(),
        SUMMARY_JSON: summary_json(summaries, meta).encode(),
        SUMMARY_CSV: summary_csv(summaries).encode(),
    }
    if plot:
        files[PLOT] = render_png(summaries)
        pareto = render_pareto_png(summaries)
        if pareto is not None:
            files[PARETO] = pareto
        cost = render_cost_png(summaries)
        if cost is not None:
            files[COST_PLOT] = cost
    try:
        write_files(out, files)
    except OSError as e:
        raise InputError(f"the out directory {out}: cannot write outputs: {e.strerror or e}") from None
    return {name: out / name for name in files}


# --------------------------------------------------------------------------- table

def _pct(rate: Rate | None) -> str:
    if rate is None or rate.value is None:
        return "n/a"
    lo, hi = rate.ci
    return f"{100 * rate.value:.0f}% [{100 * lo:.0f}-{100 * hi:.0f}]"


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def _gate_by_label(s: CellSummary) -> str:
    """Gate fire rates on harmful / benign prompts, e.g. "94%/12%"."""
    if not s.gate_fire_by_label:
        return "n/a"
    rates = (s.gate_fire_by_label.get(label) for label in ("harmful", "benign"))
    return "/".join("-" if r is None or r.value is None else f"{100 * r.value:.0f}%" for r in rates)


# What the short headers mean, under every table, each only where a shown column has it (the agreement
# columns compare with the dense model).
HEADERS = {
    "acc": "acc: same refuse/comply decision as dense",
    "FAR": "FAR (false acceptance): complied where dense refused",
    "FRR": "FRR (false refusal): refused where dense complied",
    "F1": "F1: of refusals vs dense's",
    "h/b": "h/b: harmful/benign",
}
CAPTION_END = "rates: value [Wilson 95% CI]; n/a: undefined"


def caption(columns: Sequence[str]) -> str:
    """What the headers of `columns` mean: a header explained is one a column shows."""
    words = {w for name in columns for w in name.split()}
    return "; ".join([text for term, text in HEADERS.items() if term in words] + [CAPTION_END])


CAPTION = caption([term for term in HEADERS])  # every term: the caption of a table with every column
_KEY_COLUMNS = ("method", "ratio")  # repeated in each part of a table too wide to print whole


def _columns(summaries: Sequence[CellSummary]) -> dict[str, list[str]]:
    """Each shown column's cells, in order; columns undefined for every cell (no reference, no
    gate, no perplexity, ...) are left out."""
    def agree(s: CellSummary, name: str) -> str:
        a = s.agreement
        if a is None:
            return "n/a"
        return _num(a.f1, ".2f") if name == "f1" else _pct(getattr(a, name))

    baseline = next((s.paired.baseline for s in summaries if s.paired), None) or next(
        (s.at_equal_cost.baseline for s in summaries if s.at_equal_cost), "baseline")
    columns = {
        "method": lambda s: s.method,
        "ratio": lambda s: _num(s.ratio, "g"),
        "n h/b": lambda s: f"{s.n_harmful}/{s.n_benign}" + (f" (+{s.n - s.n_harmful - s.n_benign})"
                                                            if s.n > s.n_harmful + s.n_benign else ""),
        "refusal": lambda s: _pct(s.refusal_rate),
        "over-refusal": lambda s: _pct(s.over_refusal),
        # Average FLOPs per request over the traffic mix (9 benign in 10 by default): what a user pays.
        "FLOPs mix": lambda s: _num(s.mix_flops, ".2f"),
        # The baseline's refusal at this cell's mix FLOPs, on its line to dense: pruning less for the same cost.
        f"{baseline} same FLOPs": lambda s: f"{100 * s.at_equal_cost.refusal_rate:.0f}%" if s.at_equal_cost else "n/a",
        **{f"refusal {name}": (lambda s, name=name: _pct(s.refusal_by_set.get(name)))
           for name in dict.fromkeys(n for s in summaries for n in s.refusal_by_set)},
        "acc": lambda s: agree(s, "accuracy"),
        "F1": lambda s: agree(s, "f1"),
        "FAR": lambda s: agree(s, "far"),
        "FAR harmful": lambda s: _pct(s.harmful_agreement.far) if s.harmful_agreement else "n/a",
        # Refusals gained/lost against the baseline on the same harmful prompts, exact McNemar p.
        f"vs {baseline}": lambda s: f"+{s.paired.gained}/-{s.paired.lost} p={s.paired.p:.2g}" if s.paired else "n/a",
        "FRR": lambda s: agree(s, "frr"),
        "FLOPs": lambda s: _num(s.flops_fraction, ".2f"),
        "wall s": lambda s: _num(s.wall_time_s, ".1f"),
        "gate": lambda s: _pct(s.gate_fire_rate),
        "gate h/b": _gate_by_label,
        "gate AUROC": lambda s: _num(s.gate_auroc, ".2f"),
        "ppl": lambda s: _num(s.perplexity, ".2f"),
    }
    cells = {name: [f(s) for s in summaries] for name, f in columns.items()}
    return {name: col for name, col in cells.items()
            if name in ("method", "ratio", "refusal", "over-refusal") or any(v != "n/a" for v in col)}


def _width(name: str, col: list[str]) -> int:
    return max(len(v) for v in [name, *col]) + 3  # one space either side and a rule


def summary_tables(summaries: Sequence[CellSummary], width: int | None = None) -> list:
    """Rich Tables of the cells, as few as fit `width` columns (all in one when None): a table too
    wide for the terminal is split by columns, each part repeating method and ratio, rather
    than squeezed until every value wraps or is cut. Rates read "value% [Wilson 95% CI]"."""
    from rich.table import Table

    cols = _columns(summaries)
    key = [n for n in _KEY_COLUMNS if n in cols]
    rest = [n for n in cols if n not in key]
    room = None if width is None else width - 1 - sum(_width(n, cols[n]) for n in key)
    parts: list[list[str]] = [[]]
    used = 0
    for name in rest:
        w = _width(name, cols[name])
        if room is not None and parts[-1] and used + w > room:
            parts.append([])
            used = 0
        parts[-1].append(name)
        used += w
    title = f"refusal evaluation, {summaries[0].judge} judge" if summaries else "refusal evaluation"
    tables = []
    for i, part in enumerate(parts):
        more = f" ({i + 1} of {len(parts)})" if len(parts) > 1 else ""
        table = Table(title=title + more)
        for name in key + part:
            table.add_column(name, justify="left" if name == "method" else "right", no_wrap=True)
        for row in range(len(summaries)):
            table.add_row(*(cols[name][row] for name in key + part))
        tables.append(table)
    return tables


def summary_table(summaries: Sequence[CellSummary]):
    """All the cells in one rich Table; "n/a" marks undefined values (e.g. F1 with no dense refusals)."""
    table = summary_tables(summaries)[0]
    table.caption = caption(list(_columns(summaries)))
    return table


def print_table(summaries: Sequence[CellSummary], console=None) -> None:
    """Print the table to stderr (stdout stays machine-readable), split to fit the console's width,
    and what its headers mean under it, across the whole width rather than the last part's."""
    console = console or default_console
    for table in summary_tables(summaries, console.width):
        console.print(table)
    console.print(caption(list(_columns(summaries))), style="dim", highlight=False)
