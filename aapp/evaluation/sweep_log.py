"""The resumable log of an unfinished sweep: `out/.partial`.

Crash safety. Rows are appended to `out/.partial/results.rank{R}.jsonl` as each batch
finishes (flushed and fsynced), perplexities to `perplexity.rank{R}.jsonl`, beside
`config.json`, the settings that decide what a row holds (`run_key`). `resume=True` reads
every rank's log (a torn last line from a kill is dropped) and refuses to go on with
other settings; which batches then run again is sweep_plan's business. Without `resume`,
an `out` that holds a `.partial` is an error (sweep_checks), never silently restarted.
The log is removed once the sweep's outputs are written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aapp.errors import InputError
from aapp.evaluation.sweep_config import SweepConfig
from aapp.evaluation.sweep_plan import CellKey

PARTIAL = ".partial"
CONFIG = "config.json"
ROWS_LOG = "results.rank{rank}.jsonl"
PPL_LOG = "perplexity.rank{rank}.jsonl"
ROW_FORMAT = 2  # rows carry `set` and `gate.sample_score`; a resume must not mix in older rows


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
    return {
        "row_format": ROW_FORMAT,
        "model": cfg.model, "fingerprint": loaded.fingerprint, "device": loaded.device.type,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "calib": _digest(Path(cfg.calib).read_bytes()) if cfg.calib else None,
        "prompts": _digest(json.dumps([[p.id, p.label, p.text]
                                        + ([[m.to_dict() for m in p.messages]] if p.messages is not None else [])
                                        for p in prompts]).encode()),
        "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size,
        "prune": cfg.prune_settings(), "aapp": asdict(cfg.aapp),
        "text": _digest("\n\n".join(texts).encode()) if texts is not None else None,
        "ppl_seq_len": cfg.ppl_seq_len, "ppl_windows": cfg.ppl_windows,
    }
