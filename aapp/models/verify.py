"""Is this the file, or the converted directory, that the registry promised? Sizes and sha256.

A converted directory carries a marker (`MARKER`) written last, holding the GGUF digest it
was made from and the size and sha256 of every file in it: `is_converted` compares sizes on
every load, `verify_converted` rehashes everything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from aapp.errors import ModelError
from aapp.models.cache import converted_dir
from aapp.models.spec import ModelSpec

MARKER = "aapp-alias.json"
MARKER_FORMAT = 1
CHUNK = 1 << 22


def sha256_file(path: Path, on_chunk: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if on_chunk:
                on_chunk(len(chunk))
    return h.hexdigest()


def file_problem(path: Path, size: int, sha256: str) -> str | None:
    """Why `path` is not the expected file, or None when it is. Size first: it costs no read."""
    if not path.is_file():
        return "missing"
    actual = path.stat().st_size
    if actual != size:
        return f"{actual} bytes, expected {size}"
    digest = sha256_file(path)
    if digest != sha256:
        return f"sha256 {digest[:12]}..., expected {sha256[:12]}..."
    return None


def expect_file(size: int, sha256: str) -> Callable[[Path], None]:
    """A `verify` for `aapp.io.atomic_write`: a file that is not the expected one is never renamed into place."""
    def check(path: Path) -> None:
        problem = file_problem(path, size, sha256)
        if problem:
            raise ModelError(problem)
    return check


def read_marker(path: Path) -> dict | None:
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def is_converted(spec: ModelSpec) -> bool:
    """Quick check, run on every load: marker matches `spec` and every file it lists has its size."""
    path = converted_dir(spec)
    marker = read_marker(path)
    if marker is None or marker.get("format") != MARKER_FORMAT:
        return False
    if marker.get("alias") != spec.alias or marker.get("gguf_sha256") != spec.gguf_sha256:
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return False
    try:
        return all((path / name).stat().st_size == meta["size"] for name, meta in files.items())
    except (OSError, KeyError, TypeError):
        return False


def verify_converted(spec: ModelSpec) -> None:
    """Deep check: rehash every converted file against the marker. Raises ModelError on any difference."""
    path = converted_dir(spec)
    if not is_converted(spec):
        raise ModelError(f"{spec.alias} is not cached or its conversion is incomplete; "
                         f"run `aapp models pull {spec.alias}`")
    for name, meta in read_marker(path)["files"].items():
        problem = file_problem(path / name, meta["size"], meta["sha256"])
        if problem:
            raise ModelError(f"{path / name} is corrupt ({problem}); run `aapp models pull --force {spec.alias}`")
