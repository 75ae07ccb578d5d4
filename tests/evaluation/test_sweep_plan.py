"""What a resumed sweep runs again, how the ranks' rows rejoin, and every rank deciding together."""

from dataclasses import dataclass

import pytest

from aapp.errors import InputError
from aapp.evaluation.distributed import Dist
from aapp.evaluation.sweep_plan import Cell, batches_of, batches_to_run, merge_ranks

IDS = [f"p{i}" for i in range(7)]
BATCHES = batches_of(len(IDS), 2)  # [0, 1] [2, 3] [4, 5] [6]


def test_resume_skips_only_batches_that_are_all_done():
    mine = [0, 1, 2, 3]
    assert batches_to_run(mine, BATCHES, IDS, set(), stateful=False) == mine
    # Batch 1 is half done: it runs again whole, because PP picks channels per batch.
    assert batches_to_run(mine, BATCHES, IDS, {"p0", "p1", "p2", "p6"}, stateful=False) == [1, 2]
    assert batches_to_run(mine, BATCHES, IDS, set(IDS), stateful=False) == []


def test_a_stateful_cell_replays_from_its_first_batch_to_its_last_unfinished_one():
    mine = [0, 1, 2, 3]
    assert batches_to_run(mine, BATCHES, IDS, {"p0", "p1", "p2", "p3"}, stateful=True) == [0, 1, 2, 3]
    assert batches_to_run(mine, BATCHES, IDS, {"p0", "p1", "p4", "p5", "p6"}, stateful=True) == [0, 1]
    assert batches_to_run(mine, BATCHES, IDS, set(IDS), stateful=True) == []


def test_a_rank_resumes_only_its_own_batches():
    assert batches_to_run([1, 3], BATCHES, IDS, {"p6"}, stateful=False) == [1]


@dataclass
class Prompt:
    id: str


def test_merge_puts_every_ranks_rows_back_in_prompt_order():
    cells = [Cell("dense", 0.0), Cell("pp", 0.3)]
    prompts = [Prompt("a"), Prompt("b"), Prompt("c")]
    row = lambda cell, pid: {"id": pid, "method": cell.method}  # noqa: E731
    rank0 = ({c.key: [row(c, "c"), row(c, "a")] for c in cells}, {cells[0].key: {"ppl": 3.0}})
    rank1 = ({c.key: [row(c, "b")] for c in cells}, {cells[1].key: {"ppl": 4.0}})
    rows, ppl = merge_ranks(cells, prompts, [rank0, rank1])
    assert {k: [r["id"] for r in v] for k, v in rows.items()} == {c.key: ["a", "b", "c"] for c in cells}
    assert ppl == {cells[0].key: 3.0, cells[1].key: 4.0}
    with pytest.raises(RuntimeError, match="twice"):
        merge_ranks(cells, prompts, [rank0, rank0])
    with pytest.raises(RuntimeError, match="no row for 1 prompts"):
        merge_ranks(cells, prompts, [rank0])


def test_decide_runs_the_check_on_the_main_rank_and_passes_its_failure_on():
    ran = []
    Dist().decide(lambda: ran.append(True))
    assert ran == [True]

    def fail():
        raise InputError("no room")

    with pytest.raises(InputError, match="no room"):
        Dist().decide(fail)
