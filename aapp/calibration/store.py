"""The calibration file: typed statistics of a dense model, and their safetensors format.

A `Calibration` holds, as plain typed objects:
  * `site("attn")` / `site("mlp")`: per-channel mean and mean square over general text, at
    the o_proj input (heads x head_dim channels) and the down_proj input (intermediate
    channels), each [layers, channels]: the history that Probe Pruning fuses with its probe,
    and what Wanda-sp, FLAP and mean compensation read;
  * `alignment` (optional, what AAPP reads; see aapp.methods.aapp): the same two sites and the
    block-input residual over harmful and over harmless prompts, at the chat template's
    post-instruction tokens, and per risk gate its in-sample AUROC and threshold per layer;
  * `alignment.pruned` (optional; see aapp.pruning.gate_thresholds): per risk gate, thresholds
    refitted on the features Probe Pruning's prefill gives at each of a few ratios, [R, L], and
    the ratios and `dense_layers` they were fitted with. A gate that reads a layer after the
    first pruned one sees pruned features, whose scale the dense thresholds do not fit.

The file (format "aapp-calibration/1") is one safetensors file of float32 tensors with the
metadata, JSON under the key "aapp", that fingerprints the model. This module is the only
place that knows the tensor names:

  attn.mean  attn.sq_mean  mlp.mean  mlp.sq_mean                        [L, C]  general text
  align.{attn,mlp}.{harmful,harmless}.{mean,sq_mean}                    [L, C]
  align.resid.{harmful,harmless}.{mean,energy}                          [L, D]  energy = mean square
  align.gate.{GATE}.{auroc,threshold}                                   [L]
  align.gate.{GATE}.{weight,bias}                                       [L, D], [L]  fitted gates only
  align.gate.{GATE}.pruned_threshold                                    [R, L]  optional, with the metadata
                                                                                key "gate_pruned": {"ratios":
                                                                                [R floats], "dense_layers": n,
                                                                                "max_fpr": f or null}

Files without the optional keys (written before they existed) load with `alignment.pruned` None.
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

FORMAT = "aapp-calibration/1"
SITES = ("attn", "mlp")
PROMPT_SETS = ("harmful", "harmless")
PRUNED_META = "gate_pruned"


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


RATIO_MATCH = 1e-6  # a plan's ratio matches a stored one within this


@dataclass(frozen=True)
class PrunedThresholds:
    """Gate thresholds fitted on the features of Probe Pruning's prefill, per ratio: `threshold`
    maps a gate to [R, L] for `ratios` [R], all at the plan of `dense_layers` dense layers, each
    cut so that at most `max_fpr` of the benign calibration inputs pass it (None: no cap)."""

    ratios: tuple[float, ...]
    dense_layers: int
    threshold: dict[str, torch.Tensor]
    max_fpr: float | None = None

    def find(self, gate: str, ratio: float) -> torch.Tensor | None:
        """The gate's thresholds [L] at `ratio` (within RATIO_MATCH), or None."""
        if gate not in self.threshold:
            return None
        for r, ratio_r in enumerate(self.ratios):
            if abs(ratio_r - ratio) <= RATIO_MATCH:
                return self.threshold[gate][r]
        return None

    def merged(self, new: "PrunedThresholds") -> "PrunedThresholds":
        """These thresholds with `new`'s added (a ratio both hold takes `new`'s); at another
        `dense_layers`, or for other gates, `new` replaces them."""
        if ((new.dense_layers, new.max_fpr) != (self.dense_layers, self.max_fpr)
                or set(new.threshold) != set(self.threshold)):
            return new
        keep = [r for r, ratio in enumerate(self.ratios)
                if all(abs(ratio - n) > RATIO_MATCH for n in new.ratios)]
        order = sorted([(self.ratios[r], 0, r) for r in keep] + [(n, 1, r) for r, n in enumerate(new.ratios)])
        pick = {0: self.threshold, 1: new.threshold}
        return PrunedThresholds(ratios=tuple(ratio for ratio, _, _ in order), dense_layers=new.dense_layers,
                                max_fpr=new.max_fpr,
                                threshold={g: torch.stack([pick[src][g][r] for _, src, r in order])
                                           for g in new.threshold})


@dataclass(frozen=True)
class Alignment:
    harmful: PromptSetStats
    harmless: PromptSetStats
    gates: dict[str, GateFit] = field(default_factory=dict)
    pruned: PrunedThresholds | None = None


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

    def check_model(self, fingerprint: str, name: str, geometry: Geometry | None = None) -> None:
        """The file was made for this model and, given its `geometry`, holds the shapes it needs."""
        if self.meta.get("fingerprint") != fingerprint:
            raise CalibrationError(
                f"calibration file was made for model {self.meta.get('model')!r} "
                f"(fingerprint {self.meta.get('fingerprint')}), not for {name!r} (fingerprint {fingerprint}); "
                "run `aapp calibrate` for this model"
            )
        if geometry is not None:
            # A matching fingerprint does not cover the tensors: the metadata may be intact while they are not.
            tensors = to_tensors(self)
            for tensor, shape in expected_shapes(self, geometry).items():
                actual = tuple(tensors[tensor].shape)
                if actual != shape:
                    raise CalibrationError(f"calibration tensor {tensor} has shape {list(actual)}, model {name!r} "
                                           f"needs {list(shape)}; run `aapp calibrate` for this model")

    def digest(self) -> str:
        """A short identity of these statistics, so that an output can name the calibration it used."""
        h = hashlib.sha256(json.dumps(to_meta(self), sort_keys=True, default=str).encode())
        for name, t in sorted(to_tensors(self).items()):
            h.update(f"{name}:{tuple(t.shape)}".encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def expected_shapes(cal: Calibration, g: Geometry) -> dict[str, tuple[int, ...]]:
    """The shape a model of geometry `g` needs of every tensor `cal` holds (see the table above)."""
    width = {"attn": g.num_heads * g.head_dim, "mlp": g.intermediate_size, "resid": g.hidden_size}
    out = {}
    for name, t in to_tensors(cal).items():
        parts = name.split(".")
        if parts[0] in SITES:
            out[name] = (g.num_layers, width[parts[0]])
        elif parts[1] in width:  # align.{attn,mlp,resid}.{set}.{stat}
            out[name] = (g.num_layers, width[parts[1]])
        elif parts[-1] == "weight":
            out[name] = (g.num_layers, g.hidden_size)
        elif parts[-1] == "pruned_threshold":
            out[name] = (t.shape[0], g.num_layers)  # the ratio count is checked on load
        else:  # auroc, threshold, bias
            out[name] = (g.num_layers,)
    return out


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
    if a.pruned is not None:
        for gate, threshold in a.pruned.threshold.items():
            out[f"align.gate.{gate}.pruned_threshold"] = threshold
    return out


def to_meta(cal: Calibration) -> dict:
    """The file's metadata: `cal.meta` and what the typed objects keep there."""
    meta = {"format": FORMAT, **cal.meta}
    pruned = cal.alignment.pruned if cal.alignment is not None else None
    if pruned is not None:
        meta[PRUNED_META] = {"ratios": list(pruned.ratios), "dense_layers": pruned.dense_layers,
                             "max_fpr": pruned.max_fpr}
    return meta


def _site(t: dict[str, torch.Tensor], prefix: str, sq_name: str = "sq_mean") -> SiteStats:
    return SiteStats(mean=t[f"{prefix}.mean"], sq_mean=t[f"{prefix}.{sq_name}"])


def from_tensors(meta: dict, t: dict[str, torch.Tensor]) -> Calibration:
    """The typed calibration; KeyError names a tensor the file lacks."""
    meta = dict(meta)
    alignment = None
    if any(k.startswith("align.") for k in t):
        sets = {name: PromptSetStats(attn=_site(t, f"align.attn.{name}"), mlp=_site(t, f"align.mlp.{name}"),
                                     resid=_site(t, f"align.resid.{name}", sq_name="energy"))
                for name in PROMPT_SETS}
        gates = sorted({k.split(".")[2] for k in t if k.startswith("align.gate.")})
        alignment = Alignment(**sets, gates={g: GateFit(auroc=t[f"align.gate.{g}.auroc"],
                                                        threshold=t[f"align.gate.{g}.threshold"],
                                                        weight=t.get(f"align.gate.{g}.weight"),
                                                        bias=t.get(f"align.gate.{g}.bias")) for g in gates},
                              pruned=_pruned(meta.pop(PRUNED_META, None), t))
    meta.pop(PRUNED_META, None)  # the typed object holds it (see to_meta)
    return Calibration(meta=meta, attn=_site(t, "attn"), mlp=_site(t, "mlp"), alignment=alignment)


def _pruned(spec: dict | None, t: dict[str, torch.Tensor]) -> PrunedThresholds | None:
    threshold = {k.split(".")[2]: v for k, v in t.items() if k.startswith("align.gate.")
                 and k.endswith(".pruned_threshold")}
    if spec is None:
        if threshold:
            raise KeyError(f"{PRUNED_META} (metadata of the pruned thresholds)")
        return None
    ratios = tuple(float(r) for r in spec["ratios"])
    for gate, v in threshold.items():
        if v.shape[0] != len(ratios):
            raise KeyError(f"align.gate.{gate}.pruned_threshold for {len(ratios)} ratios (it has {v.shape[0]})")
    max_fpr = spec.get("max_fpr")
    return PrunedThresholds(ratios=ratios, dense_layers=int(spec["dense_layers"]), threshold=threshold,
                            max_fpr=None if max_fpr is None else float(max_fpr))


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
    if meta.get("format") != FORMAT:
        raise CalibrationError(f"{path}: unsupported calibration format {meta.get('format')!r}, expected {FORMAT}")
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
