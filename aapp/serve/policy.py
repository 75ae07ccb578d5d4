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

from aapp.methods import facts_types
from aapp.methods.report import RowReport
from aapp.pruning.engine import PrunedModel, run_routed
from aapp.serve.generate import Outcome, generate
from aapp.serve.schemas import Sampling


def run_request(handle: PrunedModel, input_ids: torch.Tensor, sampling: Sampling,
                on_text: Callable[[str], None] | None = None,
                cancelled: Callable[[], bool] = lambda: False) -> tuple[Outcome, dict]:
    """Generate one request (`input_ids` [1, S]) under the handle's method; returns the outcome and
    the response's `aapp` object: method, ratio, the policy applied, this request's FLOPs fraction,
    the method's own facts (AAPP: its gate's score and decision), and the kept counts per layer.
    A routed request stopped at the router's layer runs again under its route; nothing was streamed
    before the stop, which comes at prefill."""
    loaded, method = handle.loaded, handle.method
    run, = run_routed(handle, 1, lambda group: generate(loaded.model, loaded.tokenizer, input_ids, sampling,
                                                       on_text, cancelled))
    report = run.reports[0]
    return run.result, aapp_object(handle, report)


def aapp_object(handle: PrunedModel, report: RowReport) -> dict:
    """The response's `aapp` object, from the request's row report."""
    facts = report.facts
    if not handle.method.prunes:
        policy = "dense"
    else:
        policy = report.policy or "pruned"
    out = {"method": handle.method.name, "ratio": handle.options.ratio, "policy": policy,
           "flops_fraction": report.flops.total.fraction}
    # Every registered method's facts field is there, null where this method has none: clients read one shape.
    out |= {kind.key: None for kind in facts_types()}
    if facts is not None:
        out[facts.key] = facts.to_json()
    out["kept"] = report.kept.to_json()
    return out
