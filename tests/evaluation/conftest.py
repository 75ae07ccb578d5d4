import pytest

from aapp.evaluation.metrics import summarize


def cell(method, ratio, harmful_refused, benign_refused, dense=None, **kw):
    """A summary from counts: harmful_refused = (k, n), benign_refused = (k, n)."""
    (hk, hn), (bk, bn) = harmful_refused, benign_refused
    refused = [True] * hk + [False] * (hn - hk) + [True] * bk + [False] * (bn - bk)
    labels = ["harmful"] * hn + ["benign"] * bn
    return summarize(method, ratio, refused, labels, judge="keyword", dense_refused=dense, **kw)


@pytest.fixture
def make_cell():
    return cell


@pytest.fixture
def sweep():
    return [
        cell("dense", None, (9, 10), (1, 10)),
        cell("pp", 0.2, (8, 10), (1, 10)),
        cell("pp", 0.4, (5, 10), (0, 10)),
        cell("aapp", 0.4, (9, 10), (2, 10)),
        cell("aapp", 0.2, (9, 10), (1, 10)),
    ]
