"""How the server runs one request through the pruning method: the one place that touches it.

Each request is its own selection batch. Probe Pruning picks kept heads and channels per batch
(its probe reads the batch's highest-residual rows) and AAPP's gate fires for a whole batch, so a
request batched with others would get a selection, and a gate decision, that depend on its
neighbours. Alone, a request's selection, decision and tokens are what it would get on an idle
server. A routing method (AAPP with on_fire dense or R) decides inline at its gate layer; where its
decision must re-run the layers before the gate (they ran pruned), the request runs again under it
and pays for the stopped prefill.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from aapp.pruning.engine import PrunedModel, Reroute
from aapp.pruning.flops import FlopCount
from aapp.pruning.run import full_kept, method_facts
from aapp.serve.generate import Outcome, generate
from aapp.serve.schemas import Sampling


def run_request(handle: PrunedModel, input_ids: torch.Tensor, sampling: Sampling,
                on_text: Callable[[str], None] | None = None,
                cancelled: Callable[[], bool] = lambda: False) -> tuple[Outcome, dict]:
    """Generate one request (`input_ids` [1, S]) under the handle's method; returns the outcome and
    the response's `aapp` object: method, ratio, the policy applied, this request's FLOPs fraction,
    the gate's score and decision, and the kept counts per layer."""
    loaded, method = handle.loaded, handle.method
    recompute, decided = 0.0, None
    try:
        out = generate(loaded.model, loaded.tokenizer, input_ids, sampling, on_text, cancelled)
        decided = handle.decided
    except Reroute as stopped:  # nothing was streamed: the stop comes at prefill
        recompute, decided = stopped.spent, stopped.decided
        with handle.running(stopped.decided.decisions[0]):
            out = generate(loaded.model, loaded.tokenizer, input_ids, sampling, on_text, cancelled)
    row = method_facts(method.row_info(1)[0], decided.info[0] if decided is not None else None)
    gate = row.get("gate")
    if not method.prunes:
        policy = "dense"
    else:
        policy = row.get("policy", "protect" if gate and gate["fired"] else "pruned")
    total = FlopCount()
    total.add(handle.record.flops)
    total.recompute += recompute
    info = {"method": method.name, "ratio": handle.options.ratio, "policy": policy,
            "flops_fraction": total.fraction, "gate": gate,
            "kept": full_kept(loaded, handle.record.kept)}
    return out, info
