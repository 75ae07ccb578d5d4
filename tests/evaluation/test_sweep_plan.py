"""The cells of a sweep, how the ranks' rows rejoin, and every rank deciding together."""

from dataclasses import dataclass

import pytest

from aapp.errors import InputError
from aapp.evaluation.distributed import Dist
from aapp.evaluation.sweep_config import PromptSet
from aapp.evaluation.sweep_plan import merge_ranks, sweep_cells

@dataclass
class Prompt:
    id: str


def test_merge_puts_every_ranks_rows_back_in_prompt_order():
    prompts = [Prompt("a"), Prompt("b"), Prompt("c")]
    row = lambda pid: {"id": pid, "method": "pp"}  # noqa: E731
    rank0, rank1 = [row("c"), row("a")], [row("b")]
    assert [r["id"] for r in merge_ranks(prompts, [rank0, rank1], "pp@0.3")] == ["a", "b", "c"]
    with pytest.raises(RuntimeError, match="twice"):
        merge_ranks(prompts, [rank0, rank0], "pp@0.3")
    with pytest.raises(RuntimeError, match="no row for 1 prompts"):
        merge_ranks(prompts, [rank0], "pp@0.3")


def test_dense_runs_first_on_every_set_then_each_method_at_each_ratio():
    sets = [PromptSet("advbench", "harmful"), PromptSet("xstest-safe", "benign")]
    cells = sweep_cells(("pp", "dense", "aapp"), (0.3, 0.4), sets)
    assert [(c.method, c.ratio, c.set.spec) for c in cells[:4]] == [
        ("dense", 0.0, "advbench"), ("dense", 0.0, "xstest-safe"), ("pp", 0.3, "advbench"), ("pp", 0.3, "xstest-safe")]
    assert len(cells) == 2 + 2 * 2 * 2


def test_decide_runs_the_check_on_the_main_rank_and_passes_its_failure_on():
    ran = []
    Dist().decide(lambda: ran.append(True))
    assert ran == [True]

    def fail():
        raise InputError("no room")

    with pytest.raises(InputError, match="no room"):
        Dist().decide(fail)
