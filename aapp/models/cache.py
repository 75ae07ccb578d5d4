"""Where an alias lives in aapp's cache.

Under `$AAPP_CACHE/models/`:

    <alias>/                 the converted transformers directory, complete only with its marker
    <alias>/aapp-alias.json  written last: GGUF digest, library versions, size and sha256 of each file
    <alias>.download/        verified parts and the assembled GGUF, deleted once converted
    .<alias>.lock            serialises pulls of one alias across processes

Names starting with a dot (other than the lock) are temporaries of a pull in progress, or
of one that crashed.
"""

from __future__ import annotations

from pathlib import Path

from aapp.models.spec import ModelSpec
from aapp.pypi import cache_dir


def models_root() -> Path:
    return cache_dir() / "models"


def converted_dir(spec: ModelSpec) -> Path:
    return models_root() / spec.alias


def download_dir(spec: ModelSpec) -> Path:
    return models_root() / f"{spec.alias}.download"


def lock_file(spec: ModelSpec) -> Path:
    return models_root() / f".{spec.alias}.lock"


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
