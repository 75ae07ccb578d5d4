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

from dataclasses import dataclass

import torch

from aapp.methods import facts_types
from aapp.methods.report import RowReport
from aapp.pruning.engine import PrunedModel, run_routed
from aapp.serve.generate import Outcome, Piece, generate
from aapp.serve.schemas import Sampling


@dataclass(frozen=True)
class Served:
    """What one request ran as: the method and ratio, the policy applied, and its row report."""

    method: str
    ratio: float
    policy: str
    report: RowReport

    @property
    def flops_fraction(self) -> float:
        return self.report.flops.total.fraction

    def to_json(self) -> dict:
        """The response's `aapp` object (its fields are documented in the README)."""
        out = {"method": self.method, "ratio": self.ratio, "policy": self.policy, "flops_fraction": self.flops_fraction}
        # Every registered method's facts field is there, null where this method has none: clients read one shape.
        out |= {kind.key: None for kind in facts_types()}
        facts = self.report.facts
        if facts is not None:
            out[facts.key] = facts.to_api()
        out["kept"] = self.report.kept.to_json()
        return out


def run_request(handle: PrunedModel, input_ids: torch.Tensor, sampling: Sampling,
                on_text: Callable[[Piece], None] | None = None,
                cancelled: Callable[[], bool] = lambda: False) -> tuple[Outcome, Served]:
    """Generate one request (`input_ids` [1, S]) under the handle's method; returns the outcome and
    what it ran as (`Served`: the response's `aapp` object). A routed request stopped at the router's
    layer runs again under its route; nothing was streamed before the stop, which comes at prefill."""
    loaded, method = handle.loaded, handle.method
    run, = run_routed(handle, 1, lambda group: generate(loaded.model, loaded.tokenizer, input_ids, sampling,
                                                       on_text, cancelled))
    report = run.reports[0]
    policy = (report.policy or "pruned") if method.prunes else "dense"
    return run.result, Served(method.name, handle.options.ratio, policy, report)
