"""`aapp prune --out FILE`: rows kept when the run is interrupted, and `--resume` to continue them.

Rows are written to a temp file beside FILE, which appears only once every row is in
(aapp.io). On Ctrl-C or SIGTERM the finished rows, a prefix of the output in input order, are
renamed to FILE.partial rather than dropped. `--resume` reads FILE.partial (else FILE), checks
that each row was made by this run's model and settings (its provenance, see
aapp.pruning.run.run_provenance) for the same prompt, and generates only the rest; batches are
formed as in a run from the first prompt, so the finished file holds the rows that run gives.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from aapp.calibration.store import Calibration
from aapp.console import info, warn
from aapp.errors import InputError, Interrupted
from aapp.io import read_jsonl, write_jsonl
from aapp.methods.base import Method
from aapp.models.loading import LoadedModel
from aapp.pruning.engine import PruneOptions
from aapp.pruning.run import PROVENANCE, GenerationSettings, generate_rows, run_provenance

PARTIAL_SUFFIX = ".partial"
# Not settings: the same model may be named by another path, and versions are warned about, not refused.
_NOT_COMPARED = (("model", "name"), ("versions",))


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def prune_to(out: str | None, loaded: LoadedModel, prompts: Sequence, method: Method, options: PruneOptions,
             calib: Calibration | None, settings: GenerationSettings, *, resume: bool = False,
             on_batch: Callable[[int], None] | None = None) -> None:
    """Generate every prompt's row into `out` (stdout when None or '-'); with `resume`, after the
    rows an interrupted run kept. An interrupt raises `Interrupted` saying what was kept."""
    to_stdout = out in (None, "-")
    if resume and to_stdout:
        raise InputError("resume continues the rows of an out file; give out")
    kept = [] if not resume else resumed_rows(Path(out), run_provenance(loaded, method, options, calib, settings),
                                              prompts)
    if kept and on_batch:
        on_batch(len(kept))
    rows: Iterator[dict] = iter(()) if len(kept) == len(prompts) else generate_rows(
        loaded, prompts, method, options, calib, settings, on_batch=on_batch, start=len(kept))
    if to_stdout:
        write_jsonl(rows, out)
        return
    partial = partial_path(out)
    try:
        write_jsonl(chain(kept, rows), out, partial=partial)
    except Interrupted as e:
        if not e.kept:
            raise
        raise Interrupted(e.signum, f"kept {e.kept} of {len(prompts)} rows in {partial}", kept=e.kept) from None
    partial.unlink(missing_ok=True)  # the finished file holds its rows


def resumed_rows(out: Path, provenance: dict, prompts: Sequence) -> list[dict]:
    """The rows that `out`'s interrupted run kept (out.partial, else out itself), each checked to
    come from a run with `provenance` for the prompt at its place; InputError names what differs."""
    partial = partial_path(out)
    source = partial if partial.exists() else out if out.exists() else None
    if source is None:
        info(f"resume: no {partial.name} or {out.name} to continue; starting from the first prompt")
        return []
    rows = read_jsonl(source)
    if len(rows) > len(prompts):
        raise InputError(f"resume: {source} holds {len(rows)} rows, more than the {len(prompts)} prompts of this run")
    want = json.loads(json.dumps(provenance))  # as a row holds it: tuples read back as lists
    for i, (row, prompt) in enumerate(zip(rows, prompts)):
        where = f"resume: {source}: row {i + 1}"
        have = row.get(PROVENANCE)
        if not isinstance(have, dict):
            raise InputError(f"{where} records no provenance (written before aapp kept it), so it cannot be "
                             "checked against this run; run without resume")
        diff = first_difference(have, want)
        if diff is not None:
            path, theirs, ours = diff
            raise InputError(f"{where} was made with {path} = {json.dumps(theirs)}, this run has {json.dumps(ours)}; "
                             "run with the same settings, or without resume")
        if (row.get("id"), row.get("prompt")) != (prompt.id, prompt.text):
            raise InputError(f"{where} answers another prompt (id {row.get('id')!r}) than this run's prompt {i + 1} "
                             f"(id {prompt.id!r}); pass the same input, limit, sample and seed")
    if rows and rows[0][PROVENANCE].get("versions") != want.get("versions"):
        warn(f"resume: {source} was written with {rows[0][PROVENANCE].get('versions')}, this run has "
             f"{want.get('versions')}")
    info(f"resume: {len(rows)} of {len(prompts)} rows already in {source}")
    return rows


def first_difference(have: Any, want: Any, path: tuple[str, ...] = ()) -> tuple[str, Any, Any] | None:
    """The first place (a dotted path) where two provenance records differ, with both values; None if none."""
    if path in _NOT_COMPARED:
        return None
    if isinstance(have, dict) and isinstance(want, dict):
        for key in dict.fromkeys([*want, *have]):
            diff = first_difference(have.get(key), want.get(key), (*path, key))
            if diff is not None:
                return diff
        return None
    return None if have == want else (".".join(path), have, want)
