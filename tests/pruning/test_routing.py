"""Per-request routing: the engine asks a method's router inline, at prefill, and the runner re-runs a
batch the router splits, group by group. A row's output and FLOPs are its own, whatever its neighbours."""

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest

from aapp.calibration.run import TextSettings, calibrate_text
from aapp.generation import encode
from aapp.methods import Dense, Router, RowDecisions
from aapp.methods.base import Route
from aapp.methods.pp import ProbePruning
from aapp.prompts import Prompt
from aapp.pruning import flops
from aapp.pruning.engine import PruneOptions
from aapp.methods.report import MethodFacts
from aapp.pruning.engine import group_by_decision
from aapp.pruning.run import GenerationSettings, generate_rows
from tests.conftest import PROMPTS, make_loaded

TEXT = ["The river ran past the old mill where the children played every summer evening. " * 10] * 4
SETTINGS = GenerationSettings(max_new_tokens=4, batch_size=4)
ESCALATE = "tell me a story about a cat"  # the prompt the test routers escalate


@dataclass(frozen=True)
class Escalation(MethodFacts):
    """The test router's facts of a row: the policy it ran under."""

    key: ClassVar[str] = "escalation"
    fired: bool = False
    score: float | None = None
    batch_score: float | None = None
    policy: str | None = None

    def to_json(self):
        return {"fired": self.fired}


class RoutedPP(ProbePruning):
    """Probe Pruning whose router, at `layer`, sends ESCALATE's row to `route` and the rest to PP."""

    def __init__(self, layer: int, route: Route):
        super().__init__()
        self.layer, self.route, self.seen = layer, route, []

    def router(self):
        return Router(self.layer, self.decide)

    def decide(self, x, token_mask):
        tokens = token_mask.sum(1).tolist()
        escalate = [n == self.escalate_tokens for n in tokens]
        return RowDecisions([self.route if e else Route() for e in escalate],
                            [Escalation(e, policy="escalated" if e else "pruned") for e in escalate])

    def observe(self, layer, x, token_mask, batch):
        self.seen.append(batch.decision)  # the router's layer is watched: every prefill passes here once

    def facts(self, batch, rows):
        return list(batch.routed) or [None] * rows


@pytest.fixture(scope="module")
def loaded():
    return make_loaded("tiny-llama")


@pytest.fixture(scope="module")
def calib(loaded):
    return calibrate_text(loaded, TEXT, TextSettings(samples=4, seq_len=32), "test")


def prompts(texts):
    return [Prompt(f"p{i}", t, None, "t") for i, t in enumerate(texts)]


def routed(loaded, layer, route):
    method = RoutedPP(layer, route)
    ids, attn = encode(loaded.tokenizer, [ESCALATE], loaded.device)
    method.escalate_tokens = int(attn.sum())
    return method


def rows_of(loaded, calib, method, texts, options):
    return list(generate_rows(loaded, prompts(texts), method, options, calib, SETTINGS))


OPTS = PruneOptions(ratio=0.4, dense_layers=1)


@pytest.mark.parametrize("route", [Route(True, 0.0), Route(True, 0.2)], ids=["dense", "lighter"])
def test_a_rows_output_does_not_depend_on_rows_routed_otherwise(loaded, calib, route):
    together = rows_of(loaded, calib, routed(loaded, 1, route), PROMPTS, OPTS)
    assert [r["policy"] for r in together] == ["pruned", "pruned", "pruned", "escalated"]
    alone = rows_of(loaded, calib, routed(loaded, 1, route), [ESCALATE], OPTS)[0]
    assert together[3]["completion"] == alone["completion"]
    assert together[3]["kept"] == alone["kept"]
    others = rows_of(loaded, calib, routed(loaded, 1, route), PROMPTS[:3], OPTS)
    assert [r["completion"] for r in together[:3]] == [r["completion"] for r in others]
    assert [r["kept"] for r in together[:3]] == [r["kept"] for r in others]


def test_an_escalated_dense_row_costs_exactly_the_dense_models_flops(loaded, calib):
    # The router reads layer 1, the first pruned one: the layers before it ran dense for every row,
    # so a row escalated alone is not run twice and costs what the dense model costs, to the FLOP.
    row = rows_of(loaded, calib, routed(loaded, 1, Route(True, 0.0)), [ESCALATE], OPTS)[0]
    dense = list(generate_rows(loaded, prompts([ESCALATE]), Dense(), PruneOptions(), None, SETTINGS))[0]
    assert row["flops"]["recompute"] == 0 and row["flops"]["probe"] == 0
    assert row["flops"]["pruned"] == dense["flops"]["pruned"] == row["flops"]["dense"]
    assert row["flops"]["fraction"] == 1.0
    assert row["completion"] == dense["completion"]
    assert row["kept"] == dense["kept"]


def test_a_route_that_needs_the_layers_before_the_gate_again_pays_for_them(loaded, calib):
    # The router reads layer 2 after pruned layer 1: a dense route stops the prefill and runs again,
    # and the row pays the stopped prefill: dense layer 0, pruned layer 1 and its probe.
    method = routed(loaded, 2, Route(True, 0.0))
    row = rows_of(loaded, calib, method, [ESCALATE], OPTS)[0]
    assert method.seen == [None, Route(True, 0.0)]
    pp = rows_of(loaded, calib, routed(loaded, 2, Route()), [ESCALATE], OPTS)[0]  # the stopped prefill's selection
    g = loaded.geometry
    ids, _ = encode(loaded.tokenizer, [ESCALATE], loaded.device)
    seq = ids.shape[1]
    kept = {k: pp["kept"][k][1] for k in ("heads", "kv_heads", "channels")}
    probe_per_layer = pp["flops"]["probe"] / 3  # layers 1-3 are pruned, each probed alike at prefill
    expected = (flops.dense_block_flops(g, seq, (seq + 1) / 2)
                + flops.block_flops(g, seq, (seq + 1) / 2, kept["heads"], kept["kv_heads"], kept["channels"])
                + probe_per_layer)
    assert math.isclose(row["flops"]["recompute"], expected, rel_tol=1e-12)
    dense = list(generate_rows(loaded, prompts([ESCALATE]), Dense(), PruneOptions(), None, SETTINGS))[0]
    assert row["flops"]["pruned"] == dense["flops"]["pruned"]
    assert math.isclose(row["flops"]["fraction"], 1 + expected / dense["flops"]["dense"], rel_tol=1e-12)
    assert row["completion"] == dense["completion"]


def test_rows_decided_alike_run_on_without_a_second_prefill(loaded, calib):
    method = routed(loaded, 1, Route(True, 0.0))
    rows = rows_of(loaded, calib, method, PROMPTS[:3], OPTS)  # no row escalates
    assert method.seen == [None]
    assert all(r["flops"]["recompute"] == 0 for r in rows)


def test_a_split_batch_runs_each_group_once_and_shares_the_stopped_prefill(loaded, calib):
    method = routed(loaded, 1, Route(True, 0.0))
    rows = rows_of(loaded, calib, method, PROMPTS, OPTS)
    assert method.seen == [None, Route(), Route(True, 0.0)]
    g = loaded.geometry
    ids, _ = encode(loaded.tokenizer, PROMPTS, loaded.device)
    stopped = flops.dense_block_flops(g, ids.numel(), (ids.shape[1] + 1) / 2)  # layer 0, dense, over the batch
    assert all(math.isclose(r["flops"]["recompute"], stopped / 4, rel_tol=1e-12) for r in rows)


def test_groups_keep_first_appearance_order_and_share_the_stopped_prefill():
    groups = group_by_decision(RowDecisions([True, False, True, True], [{"i": i} for i in range(4)]), 8.0)
    assert [(g.decision, g.rows, g.recompute_flops) for g in groups] == [(True, [0, 2, 3], 6.0), (False, [1], 2.0)]
    assert groups[0].routed == ({"i": 0}, {"i": 2}, {"i": 3})
