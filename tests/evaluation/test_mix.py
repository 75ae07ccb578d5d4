"""Average compute over a traffic mix: per set, per label and over the mix; escalations per set."""

import pytest

from aapp.evaluation.metrics import (DEFAULT_MIX, at_equal_cost, flops_fraction, interpolate, mix_flops, parse_mix,
                                     summarize)
from aapp.evaluation.plot import cost_series, render_cost_png


def _f(pruned, dense=100.0, recompute=0.0):
    return {"dense": dense, "pruned": pruned, "probe": 0.0, "bias": 0.0, "recompute": recompute}


def test_parse_mix():
    assert parse_mix("benign=0.9,harmful=0.1") == DEFAULT_MIX
    assert parse_mix("harmful=1") == {"harmful": 1.0}
    assert parse_mix("realistic-benign=0.9,harmful=0.1") == {"realistic-benign": 0.9, "harmful": 0.1}
    for bad, message in [("benign=0.9", "sum to 1"), ("benign=0.5,=0.5", "NAME=WEIGHT"), ("benign", "NAME=WEIGHT"),
                         ("benign=x,harmful=1", "must be a number"), ("benign=1.5,harmful=-0.5", r"\[0, 1\]"),
                         ("benign=0.5,benign=0.5", "twice")]:
        with pytest.raises(ValueError, match=message):
            parse_mix(bad)


def test_recomputed_flops_count_in_the_fraction():
    assert flops_fraction([_f(50.0, recompute=10.0)]) == 0.6


def test_a_cell_reports_its_cost_per_set_per_label_and_over_the_mix():
    labels = ["harmful", "harmful", "benign", "benign", "benign"]
    sets = ["adv", "adv", "ordinary", "xs", "xs"]
    flops = [_f(100.0), _f(100.0), _f(70.0), _f(70.0), _f(100.0, recompute=5.0)]
    fired = [True, True, False, False, True]
    refused = [True, True, False, True, False]
    s = summarize("aapp:dense", 0.3, refused, labels, judge="keyword", flops=flops, sets=sets, gate_fired=fired,
                  mix={"benign": 0.9, "harmful": 0.1})
    assert s.flops_by_label == {"harmful": 1.0, "benign": pytest.approx(245 / 300)}
    assert s.flops_by_set == {"adv": 1.0, "ordinary": 0.7, "xs": pytest.approx(175 / 200)}
    assert s.mix_flops == pytest.approx(0.9 * 245 / 300 + 0.1)
    assert {k: (r.k, r.n) for k, r in s.fire_by_set.items()} == {"adv": (2, 2), "ordinary": (0, 1), "xs": (1, 2)}
    assert {k: (r.k, r.n) for k, r in s.over_refusal_by_set.items()} == {"ordinary": (0, 1), "xs": (1, 2)}
    d = s.to_dict()
    assert d["mix_flops"] == s.mix_flops and d["mix"] == {"benign": 0.9, "harmful": 0.1}


def test_a_mix_needs_every_label_it_weighs():
    assert mix_flops({"benign": 0.8}, DEFAULT_MIX) is None
    assert mix_flops({"benign": 0.8}, {"benign": 1.0}) == 0.8


def test_the_cost_plot_draws_each_cell_at_its_mix_cost():
    cells = [summarize(m, r, [True, False], ["harmful", "benign"], judge="k", flops=[_f(p), _f(p)])
             for m, r, p in [("dense", 0.0, 100.0), ("pp", 0.3, 70.0), ("pp", 0.4, 60.0)]]
    series = cost_series(cells)
    assert [(p.ratio, round(p.flops, 6)) for p in series["refusal_rate"]["pp"]] == [(0.4, 0.6), (0.3, 0.7)]
    assert render_cost_png(cells).startswith(b"\x89PNG")
    assert render_cost_png([summarize("pp", 0.3, [True], ["harmful"], judge="k")]) is None


def test_interpolate_reads_the_line_between_points_and_nothing_beyond():
    pts = [(1.0, 0.5), (0.6, 0.1), (0.8, 0.2)]
    assert interpolate(pts, 0.7) == pytest.approx(0.15)
    assert interpolate(pts, 0.9) == pytest.approx(0.35)
    assert interpolate(pts, 1.0) == 0.5
    assert interpolate(pts, 0.5) is None and interpolate(pts, 1.01) is None
    assert interpolate(pts, 0.598, slack=0.005) == 0.1


def _costed(method, ratio, refused_of_10, mix_cost):
    from dataclasses import replace

    from tests.evaluation.conftest import cell
    return replace(cell(method, ratio, (refused_of_10, 10), (0, 10)), mix_flops=mix_cost)


def test_a_routed_cell_is_compared_with_the_baseline_at_its_own_cost():
    cells = [_costed("dense", 0.0, 6, 1.0), _costed("pp", 0.3, 1, 0.775), _costed("pp", 0.4, 0, 0.70),
             _costed("aapp:dense", 0.3, 5, 0.95), _costed("aapp", 0.3, 4, 0.7749), _costed("aapp:dense", 0.2, 6, 0.6)]
    out = {(s.method, s.ratio): s.at_equal_cost for s in at_equal_cost("pp", "dense", cells)}
    # pp's line runs 0.70 -> 0.775 -> 1.0 (dense); 0.95 lies 7/9 of the way from 0.775 to dense.
    assert out[("aapp:dense", 0.3)].refusal_rate == pytest.approx(0.1 + (0.6 - 0.1) * (0.95 - 0.775) / 0.225)
    assert out[("aapp", 0.3)].refusal_rate == pytest.approx(0.1, abs=1e-3)  # pp's own cost, give or take the gate
    assert out[("aapp:dense", 0.2)] is None  # cheaper than pp's cheapest cell: nothing to read
    assert out[("pp", 0.3)] is None and out[("dense", 0.0)] is None
    d = next(s for s in at_equal_cost("pp", "dense", cells) if s.method == "aapp:dense" and s.ratio == 0.3).to_dict()
    assert d["at_equal_cost"]["baseline"] == "pp" and d["at_equal_cost"]["mix_flops"] == 0.95


def test_the_table_shows_the_baseline_at_the_same_cost():
    from aapp.evaluation.report import summary_tables

    cells = at_equal_cost("pp", "dense", [_costed("dense", 0.0, 6, 1.0), _costed("pp", 0.3, 1, 0.8),
                                          _costed("aapp:dense", 0.3, 5, 0.9)])
    table = summary_tables(cells)[0]
    col = next(c for c in table.columns if c.header == "pp same FLOPs")
    assert list(col.cells) == ["n/a", "n/a", "35%"]


def test_a_mix_may_weigh_sets_and_a_set_it_names_must_be_measured():
    labels = ["harmful", "benign", "benign"]
    sets = ["adv", "ordinary", "xs"]
    flops = [_f(100.0), _f(60.0), _f(80.0)]
    s = summarize("pp", 0.3, [True, False, False], labels, judge="keyword", flops=flops, sets=sets,
                  mix={"ordinary": 0.9, "harmful": 0.1})
    assert s.mix_flops == pytest.approx(0.9 * 0.6 + 0.1 * 1.0)  # the stress set xs is left out of the traffic
    assert summarize("pp", 0.3, [True, False, False], labels, judge="keyword", flops=flops, sets=sets,
                     mix={"chat": 0.9, "harmful": 0.1}).mix_flops is None


def test_the_time_model_is_the_roofline_of_each_phase():
    from aapp.evaluation.cost import H100, estimated_seconds

    row = {"new_tokens": 5, "flops": {"prefill": {"run": 2e12}, "decode": {"run": 4e9}},
           "decode_bytes": {"weights": 1e9, "kv": 2e8, "element_bytes": 4}}
    # prefill compute-bound; each of the 4 steps reads 1.2e9 fp32 bytes = 0.6e9 bf16 bytes, memory-bound.
    want = 2e12 / H100.peak_flops + 4 * max(1e9 / H100.peak_flops, 0.6e9 / H100.bandwidth)
    assert estimated_seconds(row) == pytest.approx(want, rel=1e-12)
    assert estimated_seconds({"flops": {"dense": 1.0, "pruned": 1.0}}) is None  # an older row: no estimate
    s = summarize("pp", 0.3, [False, False], ["benign", "harmful"], judge="keyword", sets=["a", "b"],
                  est_seconds=[1.0, 3.0], decode_bytes=[10.0, 30.0], mix={"benign": 0.9, "harmful": 0.1})
    assert s.est_seconds == 2.0 and s.mix_est_seconds == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)
    assert s.est_seconds_by_set == {"a": 1.0, "b": 3.0} and s.decode_bytes_per_token == 20.0
