"""How the server runs requests through the pruning method: the one place that touches it.

Under the dense-prefill schedule (`prefill=dense`, serve's default for pruning methods) each row of a
batch is its own batch to the method: its heads and channels come from its own prefill, AAPP's router
decides it alone and never stops the prefill, and decode runs the union of the rows' structures with
each row's own masked in (aapp.pruning.engine). So requests run together as one batch, and each gets
the selection, decision and tokens it gets alone (up to the order of floating-point sums, see the
README). The dense method batches too: nothing is selected.

Under the probe schedule (`prefill=probe`, the paper's) Probe Pruning picks kept heads and channels per
batch (its probe reads the batch's highest-residual rows) and AAPP's gate fires for a whole batch, so
a request batched with others would get a selection, and a gate decision, that depend on its
neighbours: there each request is its own batch of one. A routing method (AAPP with on_fire dense or
R) decides inline at its gate layer; where its decision must re-run the layers before the gate (they
ran pruned), the request runs again under it and pays for the stopped prefill.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from aapp.methods import facts_types
from aapp.methods.report import RowReport
from aapp.pruning.engine import PrunedModel, run_routed
from aapp.serve.generate import DecodeRequest, Outcome, Piece, generate
from aapp.serve.schemas import Sampling


@dataclass(frozen=True)
class Served:
    """What one request ran as: the method and ratio, the prefill schedule, the policy applied, and its
    row report (its FLOPs are its share of what its batch ran)."""

    method: str
    ratio: float
    prefill: str | None  # "dense" or "probe"; None for a method that prunes nothing
    policy: str
    report: RowReport

    @property
    def flops_fraction(self) -> float:
        return self.report.flops.total.fraction

    def to_json(self) -> dict:
        """The response's `aapp` object (its fields are documented in the README)."""
        out = {"method": self.method, "ratio": self.ratio, "prefill": self.prefill, "policy": self.policy,
               "flops_fraction": self.flops_fraction}
        # Every registered method's facts field is there, null where this method has none: clients read one shape.
        out |= {kind.key: None for kind in facts_types()}
        facts = self.report.facts
        if facts is not None:
            out[facts.key] = facts.to_api()
        run = self.report.to_json()  # the row's run fields, written as `aapp prune` writes them
        out["flops"] = run.get("flops")
        out["kept"] = self.report.kept.to_json()
        return out


def batches(handle: PrunedModel) -> bool:
    """Whether requests may share a forward without changing each other's selection, decision or tokens:
    only where each row selects for itself (the dense prefill) or nothing is selected (dense)."""
    return not handle.method.prunes or handle.options.prefill == "dense"


def schedule(handle: PrunedModel) -> str | None:
    """The prefill schedule the handle runs (None where nothing is pruned)."""
    return handle.options.prefill if handle.method.prunes else None


def run_batch(handle: PrunedModel, requests: list[DecodeRequest]) -> list[tuple[Outcome, Served]]:
    """Generate `requests` as one batch under the handle's method; returns, in their order, each one's
    outcome and what it ran as (`Served`: the response's `aapp` object, from its row's report). More than
    one request only where `batches(handle)`. A routed batch stopped at the router's layer runs again by
    group; nothing was streamed before the stop, which comes at prefill."""
    if len(requests) > 1 and not batches(handle):
        raise ValueError(f"{handle.method.name} with prefill={handle.options.prefill} selects per batch; "
                         "run its requests one at a time")
    loaded, method = handle.loaded, handle.method
    runs = run_routed(handle, len(requests),
                      lambda group: generate(loaded.model, loaded.tokenizer, [requests[i] for i in group.rows]))
    out: list = [None] * len(requests)
    for run in runs:
        for row, outcome, report in zip(run.group.rows, run.result, run.reports):
            policy = (report.policy or "pruned") if method.prunes else "dense"
            out[row] = (outcome, Served(method.name, handle.options.ratio, schedule(handle), policy, report))
    return out


def run_request(handle: PrunedModel, input_ids: torch.Tensor, sampling: Sampling,
                on_text: Callable[[Piece], None] | None = None,
                cancelled: Callable[[], bool] = lambda: False) -> tuple[Outcome, Served]:
    """One request (`input_ids` [1, S]) as a batch of its own."""
    return run_batch(handle, [DecodeRequest(input_ids, sampling, on_text, cancelled)])[0]
