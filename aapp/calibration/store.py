"""The calibration file: typed statistics of a dense model, and their safetensors format.

A `Calibration` holds, as plain typed objects:
  * `site("attn")` / `site("mlp")`: per-channel mean and mean square over general text, at
    the o_proj input (heads x head_dim channels) and the down_proj input (intermediate
    channels), each [layers, channels]: the history that Probe Pruning fuses with its probe,
    and what Wanda-sp, FLAP and mean compensation read;
  * `alignment` (optional, what AAPP reads; see aapp.methods.aapp): the same two sites and the
    block-input residual over harmful and over harmless prompts, at the chat template's
    post-instruction tokens, and per risk gate its in-sample AUROC and threshold per layer.

The file (format "aapp-calibration/1") is one safetensors file of float32 tensors with the
metadata, JSON under the key "aapp", that fingerprints the model. This module is the only
place that knows the tensor names:

  attn.mean  attn.sq_mean  mlp.mean  mlp.sq_mean                        [L, C]  general text
  align.{attn,mlp}.{harmful,harmless}.{mean,sq_mean}                    [L, C]
  align.resid.{harmful,harmless}.{mean,energy}                          [L, D]  energy = mean square
  align.gate.{GATE}.{auroc,threshold}                                   [L]
  align.gate.{GATE}.{weight,bias}                                       [L, D], [L]  fitted gates only
"""

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
SITES = ("attn", "mlp")
PROMPT_SETS = ("harmful", "harmless")


@dataclass(frozen=True)
class SiteStats:
    """Mean and mean square per channel (or per residual dimension), each [layers, channels]."""

    mean: torch.Tensor
    sq_mean: torch.Tensor

    @property
    def variance(self) -> torch.Tensor:
        return (self.sq_mean - self.mean * self.mean).clamp(min=0)


@dataclass(frozen=True)
class PromptSetStats:
    """One prompt set's statistics at its post-instruction tokens."""

    attn: SiteStats
    mlp: SiteStats
    resid: SiteStats  # the block input of every layer: mean and energy (mean square), [L, D]

    def site(self, name: str) -> SiteStats:
        return {"attn": self.attn, "mlp": self.mlp}[name]


@dataclass(frozen=True)
class GateFit:
    """A risk gate calibrated at every layer, each [L]: the AUROC its layer is chosen by
    (in-sample for gates with nothing fitted, cross-validated for fitted ones) and the score
    threshold; a fitted linear gate also has its weights [L, D] and biases [L]."""

    auroc: torch.Tensor
    threshold: torch.Tensor
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    def at(self, layer: int) -> "GateFit":
        """This fit at one layer, as a one-layer fit."""
        one = slice(layer, layer + 1)
        return GateFit(self.auroc[one], self.threshold[one], None if self.weight is None else self.weight[one],
                       None if self.bias is None else self.bias[one])


@dataclass(frozen=True)
class Alignment:
    harmful: PromptSetStats
    harmless: PromptSetStats
    gates: dict[str, GateFit] = field(default_factory=dict)


@dataclass
class Calibration:
    meta: dict
    attn: SiteStats
    mlp: SiteStats
    alignment: Alignment | None = None

    def site(self, name: str) -> SiteStats:
        """General-text statistics at a site ("attn" or "mlp")."""
        return {"attn": self.attn, "mlp": self.mlp}[name]

    @property
    def has_alignment(self) -> bool:
        return self.alignment is not None

    def check_model(self, fingerprint: str, name: str) -> None:
        if self.meta.get("fingerprint") != fingerprint:
            raise CalibrationError(
                f"calibration file was made for model {self.meta.get('model')!r} "
                f"(fingerprint {self.meta.get('fingerprint')}), not for {name!r} (fingerprint {fingerprint}); "
                "run `aapp calibrate` for this model"
            )


# -- the format -----------------------------------------------------------------------------------
def _site_tensors(prefix: str, s: SiteStats, sq_name: str = "sq_mean") -> dict[str, torch.Tensor]:
    return {f"{prefix}.mean": s.mean, f"{prefix}.{sq_name}": s.sq_mean}


def to_tensors(cal: Calibration) -> dict[str, torch.Tensor]:
    out = {**_site_tensors("attn", cal.attn), **_site_tensors("mlp", cal.mlp)}
    a = cal.alignment
    if a is None:
        return out
    for name in PROMPT_SETS:
        stats: PromptSetStats = getattr(a, name)
        for site in SITES:
            out.update(_site_tensors(f"align.{site}.{name}", stats.site(site)))
        out.update(_site_tensors(f"align.resid.{name}", stats.resid, sq_name="energy"))
    for gate, fit in a.gates.items():
        out[f"align.gate.{gate}.auroc"], out[f"align.gate.{gate}.threshold"] = fit.auroc, fit.threshold
        if fit.weight is not None:
            out[f"align.gate.{gate}.weight"], out[f"align.gate.{gate}.bias"] = fit.weight, fit.bias
    return out


def _site(t: dict[str, torch.Tensor], prefix: str, sq_name: str = "sq_mean") -> SiteStats:
    return SiteStats(mean=t[f"{prefix}.mean"], sq_mean=t[f"{prefix}.{sq_name}"])


def from_tensors(meta: dict, t: dict[str, torch.Tensor]) -> Calibration:
    """The typed calibration; KeyError names a tensor the file lacks."""
    alignment = None
    if any(k.startswith("align.") for k in t):
        sets = {name: PromptSetStats(attn=_site(t, f"align.attn.{name}"), mlp=_site(t, f"align.mlp.{name}"),
                                     resid=_site(t, f"align.resid.{name}", sq_name="energy"))
                for name in PROMPT_SETS}
        gates = sorted({k.split(".")[2] for k in t if k.startswith("align.gate.")})
        alignment = Alignment(**sets, gates={g: GateFit(auroc=t[f"align.gate.{g}.auroc"],
                                                        threshold=t[f"align.gate.{g}.threshold"],
                                                        weight=t.get(f"align.gate.{g}.weight"),
                                                        bias=t.get(f"align.gate.{g}.bias")) for g in gates})
    return Calibration(meta=meta, attn=_site(t, "attn"), mlp=_site(t, "mlp"), alignment=alignment)


def save_calibration(cal: Calibration, path: str | Path) -> None:
    meta = {"format": FORMAT, **cal.meta}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in to_tensors(cal).items()}
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
    try:
        return from_tensors(meta, tensors)
    except KeyError as e:
        raise CalibrationError(f"{path}: missing tensor {e.args[0]}") from None
