"""A sweep's finished work on disk: one file per cell in `out/cells`, the unit of resume.

    out/cells/pp@0.3.advbench.jsonl      the rows of pp at ratio 0.3 on the advbench set
    out/cells/pp@0.3.ppl.json            held-out perplexity of pp at 0.3 (with --text)

Each file is written atomically once its unit is complete, and its first line holds the settings
that decide what it holds (`settings`: the model's fingerprint, the calibration file's digest, the
prompts, generation and method settings...). A unit whose file is present with the same settings
is not run again; present with other settings, it is a one-line error naming what differs (a
resumed sweep never mixes rows made two ways). A kill loses at most the units that were running.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aapp.errors import InputError

CELLS = "cells"
FORMAT = 3  # rows carry `set` and `gate.sample_score`; one file per cell, its settings on the first line


class CellStore:
    """`out/cells`: read, check and write the files of finished units."""

    def __init__(self, out: Path):
        self.dir = Path(out) / CELLS

    def exists(self) -> bool:
        return self.dir.is_dir() and any(self.dir.iterdir())

    def path(self, name: str) -> Path:
        return self.dir / name

    def load(self, name: str, settings: dict[str, Any]) -> list[dict] | None:
        """The unit's records when its file is present with these settings; None when absent."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            head, records = json.loads(lines[0]), [json.loads(line) for line in lines[1:] if line.strip()]
        except (OSError, ValueError, IndexError) as e:
            raise InputError(f"{path}: unreadable ({e}); remove it to run the cell again") from None
        stored = head.get("settings") if isinstance(head, dict) else None
        if not isinstance(stored, dict):
            raise InputError(f"{path}: not a sweep cell (no settings line); remove it to run the cell again")
        current = _plain(settings)
        diff = [f"{k}: {stored.get(k)!r} then, {current.get(k)!r} now"
                for k in sorted(set(stored) | set(current)) if stored.get(k) != current.get(k)]
        if diff:
            raise InputError(f"{path} was made with other settings ({'; '.join(diff)}); use the same settings, "
                             "or remove it (or the directory) to run it again")
        return records

    def save(self, name: str, settings: dict[str, Any], records: Sequence[dict]) -> None:
        from aapp.io import atomic_write, dumps_row

        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.path(name)) as f:
                f.write(json.dumps({"settings": _plain(settings)}) + "\n")
                f.write("".join(dumps_row(r) + "\n" for r in records))
        except OSError as e:
            raise InputError(f"the out directory {self.dir.parent}: cannot write {name}: {e.strerror or e}") from None


def rows_name(method: str, ratio: float, set_spec: str) -> str:
    return f"{method}@{ratio:g}.{_set_name(set_spec)}.jsonl"


def ppl_name(method: str, ratio: float) -> str:
    return f"{method}@{ratio:g}.ppl.json"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _set_name(spec: str) -> str:
    """A built-in set keeps its name; a file is its stem and a digest of its path (two sets may share a stem)."""
    if re.fullmatch(r"[\w.\-]+", spec) and not Path(spec).suffix:
        return spec
    stem = re.sub(r"[^\w.-]+", "_", Path(spec).stem)
    return f"{stem}-{digest(spec.encode())[:8]}"


def _plain(settings: dict[str, Any]) -> dict[str, Any]:
    """As JSON gives it back (tuples as lists), so stored and current settings compare equal."""
    return json.loads(json.dumps({"format": FORMAT, **settings}))
