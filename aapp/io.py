"""File helpers shared by every command: atomic writes, the checks before them, and JSONL.

Every write that replaces something a reader may open goes through here: a file, a set of
files that must change together, or a whole directory. Each is built under a temporary name
beside its target and renamed into place only once complete, so a reader sees the old
version or the new one, never a mix, and a failure leaves no temp behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from aapp.errors import InputError, Interrupted


def _plain_mode(bits: int) -> int:
    """The mode a plain open() (0o666) or mkdir() (0o777) gives: mkstemp and mkdtemp make owner-only entries."""
    umask = os.umask(0)  # the only way to read the umask is to set it
    os.umask(umask)
    return bits & ~umask


def _plain_modes(root: Path) -> None:
    """Give `root` and everything under it the modes a plain open() or mkdir() gives (the umask's):
    some writers (safetensors' save_file) make owner-only files, which another user of a shared
    cache could not read."""
    os.chmod(root, _plain_mode(0o777))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), _plain_mode(0o777))
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                executable = os.stat(path).st_mode & 0o100
                os.chmod(path, _plain_mode(0o777 if executable else 0o666))


class _Staged:
    """An open temp file beside `path` that becomes `path` on `commit`."""

    def __init__(self, path: Path, mode: str):
        self.path = path
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self.tmp = Path(tmp)
        try:
            os.chmod(tmp, _plain_mode(0o666))
            self.file = os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8")
        except BaseException:
            with suppress(OSError):
                os.close(fd)
            self.tmp.unlink(missing_ok=True)
            raise

    def seal(self) -> None:
        """Make the bytes durable before any rename can expose them."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def commit(self) -> None:
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


@contextmanager
def atomic_write(
    path: str | Path, mode: str = "w", verify: Callable[[Path], None] | None = None,
) -> Iterator[IO[Any]]:
    """Write to a temp file beside `path` and rename it into place only on success.

    A crash or an exception inside the block leaves `path` untouched (an earlier
    version stays whole) and removes the temp file. `verify`, when given, is called with
    the finished temp file before the rename; raising there also keeps `path` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = _Staged(path, mode)
    try:
        yield staged.file
        staged.seal()
        if verify is not None:
            verify(staged.tmp)
        staged.commit()
    except BaseException:
        staged.discard()
        raise


def write_files(out_dir: str | Path, files: Mapping[str, bytes]) -> None:
    """Write `files` ({name: bytes}) into `out_dir` so that they replace the old ones together.

    Every file is staged and synced before the first rename, so a failure while writing
    (a full disk, say) leaves all earlier files as they were. Other files in `out_dir` are
    left alone. Raises OSError; the caller words it for its user.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staged: list[_Staged] = []
    try:
        for name, data in files.items():
            staged.append(_Staged(out / name, "wb"))
            staged[-1].file.write(data)
            staged[-1].seal()
        for s in staged:
            s.commit()
    except BaseException:
        for s in staged:
            s.discard()
        raise


def _must_be_empty(path: Path) -> None:
    if not path.is_dir():
        raise InputError(f"{path} exists and is not a directory; choose a new or empty directory")
    if any(path.iterdir()):
        raise InputError(f"{path} exists and is not empty; choose a new or empty directory")


@contextmanager
def atomic_dir(path: str | Path, check: Callable[[Path], None] | None = _must_be_empty) -> Iterator[Path]:
    """Build a directory under a temp name beside `path`; put it in place only on success.

    The block fills the yielded temp directory; what it holds then gets the modes the umask gives
    (`_plain_modes`). An existing `path` must pass `check` (by
    default: be empty; None: anything there is replaced), both before and at the swap, and
    is replaced whole; the rename is the commit, so a failure anywhere leaves `path` as it
    was and no temp behind.
    """
    path = Path(path)
    check = check or (lambda _: None)
    if path.exists():
        check(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        _plain_modes(tmp)
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


# -- checks before a long run -------------------------------------------------------------------
# They create nothing: a run that then rejects its input must leave no empty directory behind.


def _named(path: Path, flag: str | None) -> str:
    return f"{flag} {path}" if flag else str(path)


def _cannot_write_in(d: Path) -> str | None:
    """Why files cannot be made in directory `d` (created first if missing), or None if they can."""
    base = d
    while not base.exists() and base != base.parent:  # the nearest existing ancestor is where mkdir starts
        base = base.parent
    if not base.is_dir():
        return f"cannot create directory: {base} is not a directory"
    if not os.access(base, os.W_OK | os.X_OK):
        return ("" if base == d else "cannot create directory: ") + f"{base} is not writable"
    # Permission bits are not the whole story: root passes os.access on /proc, a read-only mount
    # or a full quota still refuses. Making (and at once removing) an entry is the only sure test.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".aapp-probe-", dir=base))
    except OSError as e:
        return f"cannot create files in {base} ({e.strerror})"
    return None


def check_writable(path: str | Path, flag: str | None = None) -> Path:
    """Fail (InputError) before a long run, not after it, when `atomic_write` could not write `path`, or
    would first have to make its directory (a file's directory must exist: a typo there is an error)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{_named(path, flag)}: is a directory, expected a file path")
    if not path.parent.exists():  # a mistyped directory would be made without a word
        raise InputError(f"{_named(path, flag)}: no directory {path.parent}; create it first")
    problem = _cannot_write_in(path.parent)
    if problem:
        raise InputError(f"{_named(path, flag)}: {problem}")
    return path


def check_new_dir(path: str | Path, flag: str | None = None) -> Path:
    """Fail (InputError) when `atomic_dir` (default check) could not put a new directory at `path`:
    something other than an empty directory is there, or the parent is not writable."""
    path = check_dir_writable(path, flag, replace=True)
    if path.is_dir() and any(path.iterdir()):
        raise InputError(f"{_named(path, flag)}: exists and is not empty; choose a new or empty directory")
    return path


def check_dir_writable(path: str | Path, flag: str | None = None, *, replace: bool = False) -> Path:
    """Fail (InputError) when `path` cannot be an output directory: files written into it, or
    (`replace`) the whole of it swapped by `atomic_dir`, which also needs its parent writable."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise InputError(f"{_named(path, flag)}: exists and is not a directory")
    problem = _cannot_write_in(path)
    if problem is None and replace:
        problem = _cannot_write_in(path.parent)
    if problem:
        raise InputError(f"{_named(path, flag)}: {problem}")
    return path


# -- JSONL --------------------------------------------------------------------------------------


def read_stdin_bytes() -> bytes:
    """Everything on stdin, undecoded: text-mode stdin would turn bytes that are not UTF-8 into
    surrogates (under a C locale) that fail far from here, deep in a tokenizer."""
    stream = getattr(sys.stdin, "buffer", None)
    return stream.read() if stream is not None else sys.stdin.read().encode("utf-8", "surrogateescape")


def decode_utf8(data: bytes, name: str) -> str:
    """`data` as UTF-8 text (a leading BOM dropped), or one InputError line saying where it is not."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_jsonl(path: str | Path | None) -> list[dict[str, Any]]:
    """Read JSON objects one per line from `path`, or from stdin when `path` is None or '-'.

    Blank lines are skipped; a malformed line raises InputError naming file and line.
    """
    name = "<stdin>" if path in (None, "-") else str(path)
    if path in (None, "-"):
        data = read_stdin_bytes()
    else:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise InputError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise InputError(f"{name}: is a directory, expected a JSONL file") from None
        except OSError as e:
            raise InputError(f"{name}: cannot read: {e.strerror}") from None
    lines = decode_utf8(data, name).splitlines()
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


def write_jsonl(rows: Iterable[dict[str, Any]], out: str | Path | None, *,
                partial: str | Path | None = None) -> None:
    """Write rows to `out` atomically, or to stdout when `out` is None or '-' (a row at a time,
    so a pipe downstream sees each batch as it is generated).

    With `partial`, an interrupt (Ctrl-C, or SIGTERM as aapp.cli turns it into `Interrupted`)
    keeps the rows finished so far: they, whole lines in the order written, are renamed to
    `partial` instead of being dropped with the temp file, and `Interrupted` is raised with a
    note saying how many. `out` itself is left as it was.
    """
    if out in (None, "-"):
        for row in rows:
            sys.stdout.write(dumps_row(row) + "\n")
            sys.stdout.flush()
        return
    if partial is None:
        with atomic_write(out) as f:
            for row in rows:
                f.write(dumps_row(row) + "\n")
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged, n = _Staged(path, "w"), 0
    try:
        for row in rows:
            staged.file.write(dumps_row(row) + "\n")  # one call: an interrupt lands between lines
            staged.file.flush()  # a reader watching the run sees each row as it comes
            n += 1
        staged.seal()
        staged.commit()
    except (KeyboardInterrupt, Interrupted) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        if n == 0:
            staged.discard()
            raise Interrupted(signum, "no row was finished", kept=0) from None
        try:
            staged.seal()
            os.replace(staged.tmp, partial)
        except BaseException:
            staged.discard()
            raise
        raise Interrupted(signum, f"kept {n} finished rows in {partial}", kept=n) from None
    except BaseException:
        staged.discard()
        raise
