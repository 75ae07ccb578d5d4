"""Which cells a sweep runs, which batches of each this rank generates, and how the ranks' rows rejoin.

Cells. Dense runs once, at ratio 0: it is the reference every other cell's refuse/comply
decisions are compared with (whether or not `methods` names it). Then every other method
runs at every ratio. A cell generates the harmful prompts (labelled harmful) followed by
the benign ones (labelled benign) in batches of `batch_size`, with a fresh method and a
fresh pruning handle.

Batches are fixed by `batch_size` alone, the same on every rank and in every run. Under
torchrun each rank generates the batches it owns, whole (see aapp.evaluation.distributed:
PP picks channels per batch, so a batch must never differ from a single-process one), and
rank 0 merges every rank's rows back into prompt order.

Resume. A batch whose prompts are all in the log is skipped; a batch that is partly done
is generated again whole, for the same reason, and only its missing rows are logged.

Stateful cells. Cells that carry state from batch to batch (`PruneOptions.ema_momentum`,
AAPP's `refresh`) are run whole by one process, and on resume they run again from their
first batch (regenerating, not re-logging, the finished rows), so their state is what an
uninterrupted run would have had.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from aapp.evaluation.distributed import Dist
from aapp.evaluation.sweep_config import DENSE, SweepConfig

CellKey = tuple[str, float]


@dataclass(frozen=True)
class Cell:
    method: str
    ratio: float

    @property
    def key(self) -> CellKey:
        return (self.method, self.ratio)

    @property
    def name(self) -> str:
        return f"{self.method}@{self.ratio:g}"


def sweep_cells(methods: Sequence[str], ratios: Sequence[float]) -> list[Cell]:
    """Dense at ratio 0 first (the reference, always run), then each other method at each ratio."""
    return [Cell(DENSE, 0.0)] + [Cell(m, float(r)) for m in methods if m != DENSE for r in ratios]


def is_stateful(cell: Cell, cfg: SweepConfig) -> bool:
    """Whether a batch's channels depend on the batches before it (so it cannot be split or skipped)."""
    if cell.method == DENSE:
        return False
    return cfg.prune.ema_momentum is not None or cfg.method(cell.method).carries_state


def batches_of(n_prompts: int, batch_size: int) -> list[range]:
    """Prompt indices of each batch; the same for every rank and every run."""
    return [range(i, min(i + batch_size, n_prompts)) for i in range(0, n_prompts, batch_size)]


def plan_batches(cell_index: int, n_batches: int, dist: Dist, stateful: bool) -> list[int]:
    """The batches of a cell this rank runs: every batch it owns, or the whole cell when stateful."""
    if stateful:
        return list(range(n_batches)) if dist.owner(cell_index) == dist.rank else []
    return [b for b in range(n_batches) if dist.owns_batch(b)]


def batches_to_run(mine: Sequence[int], batches: Sequence[range], prompt_ids: Sequence[str],
                   done: Collection[str], stateful: bool) -> list[int]:
    """Which of this rank's batches to generate on resume, given the ids of the prompts `done`."""
    todo = [b for b in mine if any(prompt_ids[i] not in done for i in batches[b])]
    # A stateful cell replays its finished batches: their state feeds the batches after them.
    return list(mine[: mine.index(todo[-1]) + 1]) if stateful and todo else todo


def merge_ranks(cells: Sequence[Cell], prompts: Sequence, gathered: Sequence) -> tuple[dict, dict]:
    """Rank 0: every cell's rows in prompt order, each prompt exactly once; perplexity per cell."""
    rows: dict[CellKey, dict[str, dict]] = {c.key: {} for c in cells}
    ppl: dict[CellKey, float] = {}
    for rank, (rank_rows, rank_ppl) in enumerate(gathered):
        for key, cell_rows in rank_rows.items():
            for r in cell_rows:
                if r["id"] in rows[key]:
                    raise RuntimeError(f"rank {rank} returned prompt {r['id']!r} of cell {key} twice")
                rows[key][r["id"]] = r
        ppl.update({key: rec["ppl"] for key, rec in rank_ppl.items()})
    ordered = {}
    for c in cells:
        missing = [p.id for p in prompts if p.id not in rows[c.key]]
        if missing:
            raise RuntimeError(f"cell {c.name}: no row for {len(missing)} prompts (first {missing[0]!r})")
        ordered[c.key] = [rows[c.key][p.id] for p in prompts]
    return ordered, ppl
