import json
import math

import pytest

from aapp.evaluation.metrics import (
    Agreement,
    Rate,
    agreement,
    auroc,
    flops_fraction,
    summarize,
    wilson,
)


@pytest.mark.parametrize(
    "k, n, lo, hi",
    [
        (0, 10, 0.0, 0.27753),  # textbook values (Wilson 1927; Newcombe 1998)
        (5, 10, 0.23659, 0.76341),
        (10, 10, 0.72247, 1.0),
        (1, 1, 0.20654, 1.0),
        # Newcombe (1998), Stat. Med. 17:857, table I, method 3 (4 decimals given).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_known_intervals(k, n, lo, hi):
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=6e-5)


@pytest.mark.parametrize("n", range(1, 201))
def test_wilson_is_exact_at_the_ends_and_holds_its_rate(n):
    """At k = 0 and k = n the bound is exactly 0 and 1, not 1e-17 off (which broke the plot's error bars)."""
    assert wilson(0, n)[0] == 0.0 and wilson(n, n)[1] == 1.0
    for k in range(n + 1):
        lo, hi = wilson(k, n)
        assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_empty_and_invalid():
    assert wilson(0, 0) is None
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_rate_undefined_when_empty_and_json_is_nan_free():
    r = Rate(0, 0)
    assert r.value is None and r.ci is None
    assert json.loads(json.dumps(r.to_dict(), allow_nan=False)) == {"value": None, "ci95": None, "k": 0, "n": 0}
    assert Rate(1, 4).to_dict()["value"] == 0.25


def test_agreement_hand_made():
    dense = [True, True, True, False, False, False, False, True]
    pruned = [True, False, True, True, False, False, False, False]
    a = agreement(pruned, dense)
    assert (a.tp, a.fn, a.fp, a.tn) == (2, 2, 1, 3)
    assert a.accuracy.value == 5 / 8
    assert a.far.value == 2 / 4  # dense refused 4, pruned complied on 2 of them
    assert a.frr.value == 1 / 4  # dense complied 4, pruned refused 1 of them
    precision, recall = 2 / 3, 2 / 4
    assert a.f1 == pytest.approx(2 * precision * recall / (precision + recall))


def test_agreement_no_dense_refusals_is_undefined_not_zero():
    a = agreement([True, False, False], [False, False, False])
    assert a.f1 is None and a.far.value is None and a.far.ci is None
    assert a.frr.value == pytest.approx(1 / 3)
    assert a.accuracy.value == pytest.approx(2 / 3)
    d = a.to_dict()
    assert d["f1"] is None and d["far"]["value"] is None
    json.dumps(d, allow_nan=False)


def test_agreement_pruned_never_refuses():
    a = agreement([False, False, False], [True, True, False])
    assert a.f1 == 0.0 and a.far.value == 1.0 and a.frr.value == 0.0


def test_agreement_all_refuse_everywhere():
    a = agreement([True, True], [True, True])
    assert a.f1 == 1.0 and a.far.value == 0.0 and a.frr.value is None and a.accuracy.value == 1.0


def test_agreement_length_mismatch():
    with pytest.raises(ValueError):
        agreement([True], [True, False])


def test_flops_fraction_counts_the_probe_and_weights_by_cost():
    flops = [{"dense": 100.0, "pruned": 60.0, "probe": 5.0}, {"dense": 300.0, "pruned": 150.0, "probe": 15.0}]
    assert flops_fraction(flops) == pytest.approx((65 + 165) / 400)
    assert flops_fraction([{"dense": 10.0, "pruned": 7.0}]) == pytest.approx(0.7)
    assert flops_fraction([]) is None
    # Bias vector adds (compensation, AAPP's restoration) are compute spent too, as in FlopCount.fraction.
    assert flops_fraction([{"dense": 100.0, "pruned": 60.0, "probe": 5.0, "bias": 1.0}]) == pytest.approx(0.66)


def test_summarize_splits_by_label():
    refused = [True, True, False, True, False, False]
    labels = ["harmful", "harmful", "harmful", "benign", "benign", None]
    s = summarize("pp", 0.3, refused, labels, judge="keyword", dense_refused=[True, True, True, False, False, False],
                  gate_fired=[True, False], wall_time_s=1.5, perplexity=12.0)
    assert (s.n, s.n_harmful, s.n_benign) == (6, 3, 2)
    assert s.refusal_rate.value == pytest.approx(2 / 3)
    assert s.over_refusal.value == pytest.approx(1 / 2)
    assert s.overall_refusal.value == pytest.approx(3 / 6)
    assert s.agreement == Agreement(tp=2, fn=1, fp=1, tn=2)
    assert s.gate_fire_rate.value == 0.5 and s.flops_fraction is None
    # Over the harmful prompts only, the benign prompt dense refused and pruned answered is no loss.
    assert s.harmful_agreement == Agreement(tp=2, fn=1, fp=0, tn=0)
    d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert d["method"] == "pp" and d["ratio"] == 0.3 and d["n_harmful"] == 3 and d["perplexity"] == 12.0
    lo, hi = d["refusal_rate"]["ci95"]
    assert lo < 2 / 3 < hi


def test_summarize_per_set_refusal_gate_by_label_and_auroc():
    refused = [True, False, False, True, True, False]
    labels = ["harmful", "harmful", "harmful", "harmful", "benign", "benign"]
    sets = ["advbench", "advbench", "harmbench", "harmbench", "xstest", "xstest"]
    scores = [2.0, -1.0, 0.5, None, 0.0, -2.0]  # one prompt without a score is left out
    s = summarize("aapp:kl", 0.2, refused, labels, judge="keyword", sets=sets, gate_scores=scores,
                  gate_fired=[True, False, True, True, False, False])
    assert {k: (r.k, r.n) for k, r in s.refusal_by_set.items()} == {"advbench": (1, 2), "harmbench": (1, 2)}
    assert {k: (r.k, r.n) for k, r in s.gate_fire_by_label.items()} == {"harmful": (3, 4), "benign": (0, 2)}
    # harmful 2.0, -1.0, 0.5 vs benign 0.0, -2.0: 5 of 6 pairs ordered right
    assert s.gate_auroc == pytest.approx(5 / 6)
    d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert d["refusal_by_set"]["advbench"]["k"] == 1 and d["gate_auroc"] == pytest.approx(5 / 6)
    one_set = summarize("pp", 0.2, refused, labels, judge="keyword", sets=["advbench"] * 4 + ["xstest"] * 2)
    assert one_set.refusal_by_set == {} and one_set.gate_auroc is None  # the overall rate says it
    # Per set, against every benign prompt: advbench 2.0, -1.0 -> 3 of 4 pairs; harmbench 0.5 -> 2 of 2.
    assert {k: v["auroc"] for k, v in s.gate_by_set.items()} == {"advbench": 0.75, "harmbench": 1.0}
    assert {k: (v["fire"].k, v["fire"].n) for k, v in s.gate_by_set.items()} == {"advbench": (1, 2),
                                                                                "harmbench": (2, 2)}
    assert d["gate_by_set"]["harmbench"] == {"auroc": 1.0, "fire": s.gate_by_set["harmbench"]["fire"].to_dict()}
    assert one_set.gate_by_set == {}
    assert auroc([1.0], []) is None and auroc([1.0, 1.0], [1.0]) == 0.5


def test_summarize_without_labels_or_reference():
    s = summarize("model", None, [True, False], [None, None], judge="keyword")
    assert s.refusal_rate.value is None and s.over_refusal.value is None
    assert s.agreement is None and s.gate_fire_rate is None
    d = s.to_dict()
    assert d["refusal_rate"]["ci95"] is None and d["agreement"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in d.values())


def test_summarize_rejects_unknown_labels():
    with pytest.raises(ValueError, match="unknown labels"):
        summarize("pp", 0.1, [True], ["toxic"], judge="keyword")
