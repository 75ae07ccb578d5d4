"""How the server runs one request through the pruning method: the one place that touches it.

Each request is its own selection batch. Probe Pruning picks kept heads and channels per batch
(its probe reads the batch's highest-residual rows) and AAPP's gate fires for a whole batch, so a
request batched with others would get a selection, and a gate decision, that depend on its
neighbours. Alone, a request's selection, decision and tokens are what it would get on an idle
server. When per-request routing replaces per-batch gating (a runner that groups rows by their
gate decision), this function is what changes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from aapp.pruning.engine import PrunedModel
from aapp.pruning.run import full_kept
from aapp.serve.generate import Outcome, generate
from aapp.serve.schemas import Sampling


def run_request(handle: PrunedModel, input_ids: torch.Tensor, sampling: Sampling,
                on_text: Callable[[str], None] | None = None,
                cancelled: Callable[[], bool] = lambda: False) -> tuple[Outcome, dict]:
    """Generate one request (`input_ids` [1, S]) under the handle's method; returns the outcome and
    the response's `aapp` object: method, ratio, the policy applied, this request's FLOPs fraction,
    the gate's score and decision, and the kept counts per layer."""
    loaded, method = handle.loaded, handle.method
    # A batch of one needs no router: the method's own gate decides for this request alone.
    out = generate(loaded.model, loaded.tokenizer, input_ids, sampling, on_text, cancelled)
    gate = method.row_info(1)[0].get("gate")
    if not method.prunes:
        policy = "dense"
    else:
        policy = "protect" if gate and gate["fired"] else "pruned"
    info = {"method": method.name, "ratio": handle.options.ratio, "policy": policy,
            "flops_fraction": handle.record.flops.fraction, "gate": gate,
            "kept": full_kept(loaded, handle.record.kept)}
    return out, info
