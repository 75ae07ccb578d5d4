"""The calibration file: safetensors tensors plus JSON metadata that fingerprints the model."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from aapp.errors import CalibrationError
from aapp.io import atomic_write

FORMAT = "aapp-calibration/1"


@dataclass
class Calibration:
    """Per-layer, per-channel statistics of a dense model.

    Tensors (all [layers, channels] float32):
      attn.sq_mean / attn.mean   at the o_proj input (heads x head_dim channels)
      mlp.sq_mean / mlp.mean     at the down_proj input (intermediate channels)
      align.*                    alignment statistics (see aapp.calibration.alignment)
    """

    meta: dict
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def history(self, site: str) -> torch.Tensor:
        return self.tensors[f"{site}.sq_mean"]

    def variance(self, site: str) -> torch.Tensor:
        mean = self.tensors[f"{site}.mean"]
        return (self.tensors[f"{site}.sq_mean"] - mean * mean).clamp(min=0)

    @property
    def has_alignment(self) -> bool:
        return any(k.startswith("align.") for k in self.tensors)

    def check_model(self, fingerprint: str, name: str) -> None:
        if self.meta.get("fingerprint") != fingerprint:
            raise CalibrationError(
                f"calibration file was made for model {self.meta.get('model')!r} "
                f"(fingerprint {self.meta.get('fingerprint')}), not for {name!r} (fingerprint {fingerprint}); "
                "run `aapp calibrate` for this model"
            )


def save_calibration(cal: Calibration, path: str | Path) -> None:
    meta = {"format": FORMAT, **cal.meta}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in cal.tensors.items()}
    blob = save(tensors, metadata={"aapp": json.dumps(meta, sort_keys=True)})
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
    if meta.get("format") != FORMAT:
        raise CalibrationError(f"{path}: unsupported calibration format {meta.get('format')!r}, expected {FORMAT}")
    for key in ("attn.sq_mean", "mlp.sq_mean", "attn.mean", "mlp.mean"):
        if key not in tensors:
            raise CalibrationError(f"{path}: missing tensor {key}")
    return Calibration(meta=meta, tensors=tensors)
