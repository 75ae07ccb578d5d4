import pytest

from aapp.stats import auroc


def test_perfect_separation_is_one_and_reversed_is_zero():
    assert auroc([2.0, 3.0, 5.0], [0.0, 1.0]) == 1.0
    assert auroc([0.0, 1.0], [2.0, 3.0, 5.0]) == 0.0


def test_ties_count_half():
    assert auroc([1.0], [1.0]) == 0.5
    # 1 vs {1, 0}: a tie (1/2) and a win (1) over two pairs.
    assert auroc([1.0], [1.0, 0.0]) == 0.75
    # Each positive against each negative: 3>1, 3>2, 2 ties 2, 2>1 -> 3.5 of 4.
    assert auroc([3.0, 2.0], [1.0, 2.0]) == pytest.approx(3.5 / 4)


def test_empty_side_is_undefined():
    assert auroc([], [1.0]) is None
    assert auroc([1.0], []) is None
    assert auroc([], []) is None


def test_metrics_still_offers_it():
    from aapp.evaluation import metrics

    assert metrics.auroc is auroc


def test_mcnemar_exact():
    from aapp.stats import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0  # an even split is no evidence
    assert mcnemar_exact(5, 0) == mcnemar_exact(0, 5) == 2 / 32  # 2 * (1/2)^5
    assert abs(mcnemar_exact(10, 2) - 0.03857421875) < 1e-12  # 2 * P(X <= 2), X ~ Binomial(12, 1/2)
