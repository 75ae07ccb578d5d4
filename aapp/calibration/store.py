"""The calibration file: typed general statistics of a dense model, the sections methods add to
it, and their safetensors format.

A `Calibration` holds:
  * `site("attn")` / `site("mlp")`: per-channel mean and mean square over general text, at
    the o_proj input (heads x head_dim channels) and the down_proj input (intermediate
    channels), each [layers, channels]: the history that Probe Pruning fuses with its probe,
    and what Wanda-sp, FLAP and mean compensation read;
  * `sections`: what a method calibrates beyond that, by the section's name, as raw tensors and
    metadata that the method alone reads and writes (AAPP's is "align": aapp.methods.aapp.store).

The file is one safetensors file of float32 tensors with JSON metadata under the key "aapp" that
fingerprints the model. This module is the only place that knows the general tensors' names, and
how a section is laid out in the file:

  attn.mean  attn.sq_mean  mlp.mean  mlp.sq_mean    [L, C]  general text
  SECTION.NAME                                      a section's tensor NAME
  metadata "sections": {SECTION: {...}}             a section's metadata

Format "aapp-calibration/2". Files of format 1 (before sections) still load: their other tensors
are read as sections by prefix, and each such section sees the file's metadata as its own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from aapp.errors import CalibrationError
from aapp.io import atomic_write
from aapp.models.adapters import Geometry

FORMAT = "aapp-calibration/2"
OLD_FORMATS = ("aapp-calibration/1",)
SITES = ("attn", "mlp")
SECTIONS_META = "sections"


@dataclass(frozen=True)
class SiteStats:
    """Mean and mean square per channel (or per residual dimension), each [layers, channels]."""

    mean: torch.Tensor
    sq_mean: torch.Tensor

    @property
    def variance(self) -> torch.Tensor:
        return (self.sq_mean - self.mean * self.mean).clamp(min=0)


@dataclass(frozen=True)
class Section:
    """A method's own part of a calibration: tensors by name, and metadata (JSON values)."""

    tensors: dict[str, torch.Tensor]
    meta: dict


@dataclass
class Calibration:
    meta: dict
    attn: SiteStats
    mlp: SiteStats
    sections: dict[str, Section] = field(default_factory=dict)

    def site(self, name: str) -> SiteStats:
        """General-text statistics at a site ("attn" or "mlp")."""
        return {"attn": self.attn, "mlp": self.mlp}[name]

    def check_model(self, fingerprint: str, name: str, geometry: Geometry | None = None) -> None:
        """The file was made for this model and, given its `geometry`, holds the general statistics'
        shapes it needs (a section's owner checks its own)."""
        if self.meta.get("fingerprint") != fingerprint:
            raise CalibrationError(
                f"calibration file was made for model {self.meta.get('model')!r} "
                f"(fingerprint {self.meta.get('fingerprint')}), not for {name!r} (fingerprint {fingerprint}); "
                "run `aapp calibrate` for this model"
            )
        if geometry is not None:
            # A matching fingerprint does not cover the tensors: the metadata may be intact while they are not.
            width = {"attn": geometry.num_heads * geometry.head_dim, "mlp": geometry.intermediate_size}
            for site in SITES:
                for stat, t in (("mean", self.site(site).mean), ("sq_mean", self.site(site).sq_mean)):
                    check_shape(f"{site}.{stat}", t, (geometry.num_layers, width[site]), name)

    def digest(self) -> str:
        """A short identity of these statistics, so that an output can name the calibration it used."""
        h = hashlib.sha256(json.dumps(to_meta(self), sort_keys=True, default=str).encode())
        for key, t in sorted(to_tensors(self).items()):
            h.update(f"{key}:{tuple(t.shape)}".encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def check_shape(tensor: str, t: torch.Tensor, shape: tuple[int, ...], model: str) -> None:
    """One calibration tensor has the shape model `model` needs, or a one-line error naming it."""
    if tuple(t.shape) != tuple(shape):
        raise CalibrationError(f"calibration tensor {tensor} has shape {list(t.shape)}, model {model!r} "
                               f"needs {list(shape)}; run `aapp calibrate` for this model")


# -- the format -----------------------------------------------------------------------------------
def to_tensors(cal: Calibration) -> dict[str, torch.Tensor]:
    out = {"attn.mean": cal.attn.mean, "attn.sq_mean": cal.attn.sq_mean,
           "mlp.mean": cal.mlp.mean, "mlp.sq_mean": cal.mlp.sq_mean}
    for name, section in cal.sections.items():
        out.update({f"{name}.{key}": t for key, t in section.tensors.items()})
    return out


def to_meta(cal: Calibration) -> dict:
    """The file's metadata: `cal.meta`, and each section's under "sections"."""
    return {"format": FORMAT, **cal.meta, SECTIONS_META: {n: s.meta for n, s in cal.sections.items()}}


def from_tensors(meta: dict, t: dict[str, torch.Tensor]) -> Calibration:
    """The typed calibration; KeyError names a tensor the file lacks."""
    meta = dict(meta)
    old = meta.pop("format", FORMAT) in OLD_FORMATS
    section_meta = meta.pop(SECTIONS_META, {})
    names = sorted({k.split(".", 1)[0] for k in t} - set(SITES))
    sections = {}
    for name in names:
        tensors = {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith(name + ".")}
        # A format-1 file kept a section's metadata among the file's own.
        sections[name] = Section(tensors, dict(meta) if old else dict(section_meta.get(name, {})))
    site = {s: SiteStats(mean=t[f"{s}.mean"], sq_mean=t[f"{s}.sq_mean"]) for s in SITES}
    return Calibration(meta=meta, attn=site["attn"], mlp=site["mlp"], sections=sections)


def save_calibration(cal: Calibration, path: str | Path) -> None:
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in to_tensors(cal).items()}
    blob = save(tensors, metadata={"aapp": json.dumps(to_meta(cal), sort_keys=True)})
    with atomic_write(path, "wb") as f:
        f.write(blob)


def load_calibration(path: str | Path) -> Calibration:
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: no such calibration file")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("aapp")
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CalibrationError(f"{path}: not a readable safetensors file ({e})") from None
    if raw is None:
        raise CalibrationError(f"{path}: not an aapp calibration file (no aapp metadata)")
    meta = json.loads(raw)
    if meta.get("format") not in (FORMAT, *OLD_FORMATS):
        raise CalibrationError(f"{path}: unsupported calibration format {meta.get('format')!r}, expected {FORMAT}; "
                               "run `aapp calibrate` again")
    for name, t in tensors.items():
        _check_values(path, name, t)
    try:
        return from_tensors(meta, tensors)
    except KeyError as e:
        raise CalibrationError(f"{path}: missing tensor {e.args[0]}") from None


def _check_values(path: Path, name: str, t: torch.Tensor) -> None:
    """Every value finite: a file whose bytes were damaged (0xFF reads as NaN) must not prune a model."""
    if t.dtype != torch.float32:
        raise CalibrationError(f"{path}: tensor {name} is {str(t.dtype).removeprefix('torch.')}, expected float32")
    values = t
    if name.endswith(".auroc"):
        values = t.nan_to_num(0.5)  # a gate's AUROC is NaN where a prompt set was empty (aapp.stats.auroc)
        if not ((values >= 0) & (values <= 1)).all():
            raise CalibrationError(f"{path}: tensor {name} holds values outside [0, 1]; the file is corrupted, "
                                   "run `aapp calibrate` again")
    if not torch.isfinite(values).all():
        raise CalibrationError(f"{path}: tensor {name} holds non-finite values (NaN or inf); the file is corrupted, "
                               "run `aapp calibrate` again")
    if name.endswith("sq_mean") and (values < 0).any():  # a mean of squares
        raise CalibrationError(f"{path}: tensor {name} holds negative values, which a mean of squares cannot; "
                               "the file is corrupted, run `aapp calibrate` again")
