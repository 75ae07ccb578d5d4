"""File helpers shared by every command: atomic writes and JSONL."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from aapp.errors import InputError


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temp file beside `path` and rename it into place only on success.

    A crash or an exception inside the block leaves `path` untouched (an earlier
    version stays whole) and removes the temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600; give the result the mode a plain open() would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _must_be_empty(path: Path) -> None:
    if any(path.iterdir()):
        raise InputError(f"{path} exists and is not empty; choose a new or empty directory")


@contextmanager
def atomic_dir(path: str | Path, check: Callable[[Path], None] = _must_be_empty) -> Iterator[Path]:
    """Build a directory under a temp name beside `path`; put it in place only on success.

    The block fills the yielded temp directory. An existing `path` must pass `check` (by
    default: be empty), both before and at the swap, and is replaced whole; the rename
    is the commit, so a failure anywhere leaves `path` as it was and no temp behind.
    """
    path = Path(path)
    if path.exists():
        check(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the dir a plain mkdir's mode
        if not path.exists():
            os.rename(tmp, path)
            return
        check(path)  # it may have changed while the block ran
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.rename(path, aside / path.name)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(aside / path.name, path)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_writable(path: str | Path) -> None:
    """Fail before a long run, not after it, when `path` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create directory {parent}: {e.strerror}") from None
    if path.is_dir():
        raise InputError(f"{path} is a directory, expected a file path")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{parent} is not writable")


def read_jsonl(path: str | Path | None) -> list[dict[str, Any]]:
    """Read JSON objects one per line from `path`, or from stdin when `path` is None or '-'.

    Blank lines are skipped; a malformed line raises InputError naming file and line.
    """
    name = "<stdin>" if path in (None, "-") else str(path)
    if path in (None, "-"):
        lines = sys.stdin.read().splitlines()
    else:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise InputError(f"{name}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{name}: cannot read: {e}") from None
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{name}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{name}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def dumps_row(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False)


def write_jsonl(rows: Iterable[dict[str, Any]], out: str | Path | None) -> None:
    """Write rows to `out` atomically, or to stdout when `out` is None or '-' (a row at a time,
    so a pipe downstream sees each batch as it is generated)."""
    if out in (None, "-"):
        for row in rows:
            sys.stdout.write(dumps_row(row) + "\n")
            sys.stdout.flush()
        return
    with atomic_write(out) as f:
        for row in rows:
            f.write(dumps_row(row) + "\n")
