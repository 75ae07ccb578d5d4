"""AAPP's gates as plain functions: the fitted logistic gate learns what separates harm, reports an
honest (cross-validated) AUROC, and is deterministic."""

import torch

from aapp.methods.aapp.gates import GATES, auroc, best_threshold, fit_linear, fit_logistic


def _sets(n=40, layers=3, d=16, signal_layer=1, seed=0):
    """Harmful and harmless features [n, layers, d] that differ only along one direction at one layer."""
    gen = torch.Generator().manual_seed(seed)
    harmful, harmless = torch.randn(n, layers, d, generator=gen), torch.randn(n, layers, d, generator=gen)
    harmful[:, signal_layer, 3] += 4.0
    return harmful, harmless


def test_fit_linear_finds_the_separating_channel_and_is_deterministic():
    harmful, harmless = _sets()
    x = torch.cat([harmful[:, 1], harmless[:, 1]])
    y = torch.cat([torch.ones(40), torch.zeros(40)]).double()
    w = torch.full((80,), 1 / 80, dtype=torch.float64)
    weight, bias = fit_linear(x, y, w, l2=0.1)
    assert int(weight.abs().argmax()) == 3
    again = fit_linear(x, y, w, l2=0.1)
    assert torch.equal(weight, again[0]) and torch.equal(bias, again[1])


def test_fit_logistic_cross_validates_so_noise_layers_score_chance():
    harmful, harmless = _sets()
    fit = fit_logistic(harmful, [harmless])
    assert fit.weight.shape == (3, 16) and fit.bias.shape == (3,)
    assert fit.auroc[1] > 0.9
    # 16 noise dimensions and 80 rows separate perfectly in-sample; out of fold they must not.
    assert fit.auroc[0] < 0.8 and fit.auroc[2] < 0.8
    scores = GATES["logistic"].scores(torch.cat([harmful, harmless]), None, None, fit) - fit.threshold
    fires = scores[:, 1] > 0
    assert fires[:40].float().mean() > 0.9 and fires[40:].float().mean() < 0.1


def test_prose_joins_the_benign_side():
    harmful, harmless = _sets(signal_layer=1)
    gen = torch.Generator().manual_seed(5)
    prose = torch.randn(40, 3, 16, generator=gen)
    prose[:, 1, 3] += 3.0  # prose that looks like harm along the harmful direction
    without = fit_logistic(harmful, [harmless])
    with_prose = fit_logistic(harmful, [harmless, prose])
    fires = lambda fit: (GATES["logistic"].scores(prose, None, None, fit) - fit.threshold)[:, 1] > 0  # noqa: E731
    assert fires(with_prose).float().mean() < fires(without).float().mean()


def test_gate_helpers():
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    assert best_threshold(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.5


def test_default_gate_layers_come_from_calibration_alone():
    from types import SimpleNamespace

    from aapp.methods.aapp.store import GateFit
    from aapp.methods.aapp import AAPPOptions
    from aapp.methods.aapp.method import gate_layer

    auroc_by_layer = torch.tensor([0.5, 0.8, 0.9, 0.95, 0.975, 0.985, 0.98, 0.97])
    fit = GateFit(auroc=auroc_by_layer, threshold=torch.zeros(8))
    calib = SimpleNamespace(gates={"logistic": fit, "direction": fit})  # the alignment gate_layer reads
    g = SimpleNamespace(num_layers=8)
    plan = SimpleNamespace(layer_ratios=[0.0, 0.0, 0.0, 0.4, 0.4, 0.4, 0.4, 0.4], first_pruned=3, last_dense_read=3)
    # Fitted: the earliest layer within 0.01 of the best (0.985 at 5), wherever pruning starts.
    assert gate_layer(AAPPOptions(gate="logistic"), calib, g, plan) == 4
    # Not fitted: the best layer up to the first pruned one, so it decides before any pruned layer runs.
    assert gate_layer(AAPPOptions(gate="direction"), calib, g, plan) == 3
    assert gate_layer(AAPPOptions(gate="always"), calib, g, plan) == 0
    assert gate_layer(AAPPOptions(gate="logistic", gate_layer=6), calib, g, plan) == 6


def test_fit_logistic_reports_each_layer_as_it_goes():
    harmful, harmless = _sets()
    seen = []
    fit_logistic(harmful, [harmless], on_layer=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
