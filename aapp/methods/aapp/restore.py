"""AAPP's refusal restoration ("lever 1"): bias vectors added when the gate fires.

Pruning removes what the pruned heads (o_proj input columns) and MLP channels (down_proj
input columns) would have written into the residual stream. On a fired batch, AAPP can add
part of it back as o_proj / down_proj biases (the FLAP-style compensation of
aapp.methods.base.compensation, but conditioned on harm):

  none          no restoration (the selection as PP or the protected selection gives it)
  harmful-mean  harm = W[:, pruned] @ mean_harmful[pruned]: what the pruned structures output
                on average over the HARMFUL calibration prompts
  direction     only that restoration's component along the unit refusal direction d at the
                layer's output (allocation.refusal_direction), in the spirit of AIRD (arXiv
                2504.04215), which realigns the refusal direction after compression

With PP's general compensation (`aapp+comp`), let base be its bias at a site (0 where that site
is not compensated). Fired: harmful-mean gives harm (it replaces base: both estimate the same
pruned output, harm from the inputs the gate says this batch resembles); direction gives
base + d (d . (harm - base)), i.e. base off the refusal direction and harm along it, so general
compensation is kept and only the refusal component is conditioned on harm. Not fired: exactly
what PP gives. Either way a site costs one vector add per token, and the masks, hence the
matmul FLOPs, are untouched.
"""

from __future__ import annotations

import torch

from aapp.calibration.store import Calibration
from aapp.methods.aapp.store import alignment
from aapp.methods.base import Selection
from aapp.methods.scores import flap_compensation
from aapp.models.adapters import Geometry, LayerParts

RESTORE = ("none", "harmful-mean", "direction")


def harmful_mean(calib: Calibration, layer: int, parts: LayerParts, sel: Selection,
                 g: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """What `sel`'s pruned heads and channels output on average over the harmful calibration
    prompts: (o_proj bias, down_proj bias)."""
    harmful = alignment(calib).harmful
    attn = flap_compensation(harmful.attn.mean[layer], parts.o_proj.weight, sel.mask.q_rows(g.head_dim))
    mlp = flap_compensation(harmful.mlp.mean[layer], parts.down_proj.weight, sel.mask.channels)
    return attn, mlp


def restored(kind: str, calib: Calibration, layer: int, parts: LayerParts, sel: Selection, g: Geometry,
             direction: torch.Tensor | None = None) -> Selection:
    """`sel` (a fired batch's selection, with PP's compensation biases if any) with its biases
    restored by `kind` (see the module docstring); `direction` is the layer's unit refusal
    direction, needed by "direction"."""
    if kind == "none":
        return sel
    harm = harmful_mean(calib, layer, parts, sel, g)
    if kind == "harmful-mean":
        return Selection(sel.mask, attn_bias=harm[0], mlp_bias=harm[1])
    if kind != "direction":
        raise ValueError(f"unknown restoration {kind!r}")
    out = []
    for h, base in zip(harm, (sel.attn_bias, sel.mlp_bias), strict=True):
        d = direction.to(h.device, torch.float32)
        base = torch.zeros_like(h) if base is None else base.float()
        out.append(base + d * (d @ (h - base)))
    return Selection(sel.mask, attn_bias=out[0], mlp_bias=out[1])
