"""The benchmarks' timing runner: which runs are kept, in what order, and how they are summarized (no clocks read)."""

import pytest

from aapp.timing import rounds, summary


def test_warmup_runs_are_seen_but_not_kept_and_every_round_runs_every_config():
    calls, seen = [], []
    kept = rounds(["a", "b", "c"], lambda c: calls.append(c) or len(calls), warmup=1, repeats=2,
                  on_run=lambda c, r, warm: seen.append((c, warm)))
    assert calls == ["a", "b", "c"] * 3
    assert kept == {"a": [4, 7], "b": [5, 8], "c": [6, 9]}
    assert [w for _, w in seen] == [True] * 3 + [False] * 6


def test_rotation_changes_which_config_runs_first():
    calls = []
    rounds(["a", "b", "c"], calls.append, warmup=1, repeats=2, rotate=True)
    assert [calls[i] for i in (0, 3, 6)] == ["c", "a", "b"]  # rounds -1, 0, 1
    with pytest.raises(ValueError):
        rounds(["a"], calls.append, warmup=0, repeats=0)


def test_summary():
    s = summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["iqr"]) == (3.0, 2.0)
    assert s["p10"] == pytest.approx(1.4) and s["p90"] == pytest.approx(4.6)
    assert summary([2.0]) == {"median": 2.0, "iqr": 0.0, "p10": 2.0, "p90": 2.0, "all": [2.0]}
