import pytest
import torch

from aapp.methods.scores import flap, flap_compensation, fuse, per_head, ppsp, wanda_sp


def test_fuse_formula():
    P = torch.tensor([1.0, 0.0, 3.0, 0.0])
    H = torch.tensor([1.0, 2.0, 1.0, 0.0])
    expected = []
    for p, h in zip(P.tolist(), H.tolist()):
        w = p / (p + h) if p + h > 0 else 0.0
        expected.append((1 - w) * h + w * p)
    torch.testing.assert_close(fuse(P, H), torch.tensor(expected))


def test_ppsp_matches_loop():
    torch.manual_seed(1)
    W = torch.randn(7, 5)
    C = torch.rand(5)
    expected = torch.tensor([C[k] * sum(W[i, k] ** 4 for i in range(7)) ** 0.5 for k in range(5)])
    torch.testing.assert_close(ppsp(C, W), expected)


def test_wanda_sp_matches_loop():
    torch.manual_seed(2)
    W = torch.randn(6, 4)
    sq = torch.rand(4)
    expected = torch.tensor([sum(abs(W[i, k]) for i in range(6)) * sq[k] ** 0.5 for k in range(4)])
    torch.testing.assert_close(wanda_sp(sq, W), expected)


def test_flap_and_compensation():
    torch.manual_seed(3)
    W = torch.randn(6, 4)
    var = torch.rand(4)
    expected = torch.tensor([var[k] * sum(W[i, k] ** 2 for i in range(6)) for k in range(4)])
    torch.testing.assert_close(flap(var, W), expected)
    mean = torch.randn(4)
    kept = torch.tensor([0, 2])
    torch.testing.assert_close(flap_compensation(mean, W, kept), W[:, 1] * mean[1] + W[:, 3] * mean[3])


def test_per_head_sums_channels():
    s = torch.arange(12.0)
    torch.testing.assert_close(per_head(s, 4), torch.tensor([6.0, 22.0, 38.0]))


def test_per_head_l2_norm_as_the_reference_code():
    s = torch.tensor([3.0, 4.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    torch.testing.assert_close(per_head(s, 4, "l2"), torch.tensor([5.0, 2.0]))
    with pytest.raises(ValueError, match="unknown head score"):
        per_head(s, 4, "max")


def test_pp_options_refuse_an_unknown_head_score():
    from aapp.errors import AappError
    from aapp.methods import PPScoring

    with pytest.raises(AappError, match="head_score"):
        PPScoring(head_score="max")
