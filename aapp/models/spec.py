"""What an alias is: the pinned wheel files that make up its GGUF, and their digests.

Plain data, shared by the registry (which lists the aliases) and the fetch path (which
downloads and converts one), so that neither has to import the other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PackagePart:
    """One file inside one pinned wheel; the parts of an alias concatenate to its GGUF."""

    package: str
    version: str
    member: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    alias: str
    architecture: str  # transformers' model_type once converted
    description: str
    parts: tuple[PackagePart, ...]
    gguf_name: str
    gguf_size: int
    gguf_sha256: str
    params: int  # parameters of the converted model (an untied lm_head counts)
