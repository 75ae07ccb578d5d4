"""Which cells a sweep runs, which batches of each this rank generates, and how the ranks' rows rejoin.

Cells. A cell is a method at a ratio on one prompt set. Dense runs once, at ratio 0, on every
set: it is the reference every other cell's refuse/comply decisions are compared with (whether
or not `methods` names it). Then every other method runs at every ratio on every set. A cell
generates its set's prompts in batches of `batch_size` (in order, or sorted by length), with a
fresh method and a fresh pruning handle, so a batch never holds two sets.

Batches are fixed by the cell's prompts and `batch_size` alone, the same on every rank and in
every run. Under torchrun each rank generates the batches it owns, whole (see
aapp.evaluation.distributed: PP picks channels per batch, so a batch must never differ from a
single-process one), and rank 0 merges every rank's rows back into prompt order.

Stateful cells. Cells that carry state from batch to batch (`PruneOptions.ema_momentum`,
AAPP's `refresh`) are run whole by one process, so their state is what a single process has;
the ranks run such cells side by side (aapp.evaluation.sweep's waves).
A cell is finished, or run again whole (sweep_store), so resume needs nothing more here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aapp.evaluation.distributed import Dist
from aapp.evaluation.sweep_config import DENSE, CellSettings, PromptSet

CellKey = tuple[str, float]  # method, ratio: what a summary reports (over every set)


@dataclass(frozen=True)
class Cell:
    method: str
    ratio: float
    set: PromptSet

    @property
    def key(self) -> CellKey:
        return (self.method, self.ratio)

    @property
    def name(self) -> str:
        return f"{self.method}@{self.ratio:g} {self.set.spec}"


def sweep_cells(methods: Sequence[str], ratios: Sequence[float], sets: Sequence[PromptSet]) -> list[Cell]:
    """Dense at ratio 0 first (the reference, always run), then each other method at each ratio; each on every set."""
    grid = [(DENSE, 0.0)] + [(m, float(r)) for m in methods if m != DENSE for r in ratios]
    return [Cell(m, r, s) for m, r in grid for s in sets]


def is_stateful(method: str, cells: CellSettings) -> bool:
    """Whether a batch's channels depend on the batches before it (so a cell cannot be split)."""
    if method == DENSE:
        return False
    return cells.prune_options(method, None).ema_momentum is not None or cells.method(method).carries_state


def batches_of(n_prompts: int, batch_size: int) -> list[range]:
    """Prompt indices of each batch; the same for every rank and every run."""
    return [range(i, min(i + batch_size, n_prompts)) for i in range(0, n_prompts, batch_size)]


def plan_batches(item_index: int, n_batches: int, dist: Dist, stateful: bool) -> list[int]:
    """The batches of a cell this rank runs: every batch it owns, or, for a stateful cell (the
    `item_index`-th indivisible unit of the sweep), the whole cell on the rank that owns it."""
    if stateful:
        return list(range(n_batches)) if dist.owner(item_index) == dist.rank else []
    return [b for b in range(n_batches) if dist.owns_batch(b)]


def merge_ranks(prompts: Sequence, gathered: Sequence[Sequence[dict]], what: str) -> list[dict]:
    """Rank 0: one cell's rows from every rank, in prompt order, each prompt exactly once."""
    rows: dict[str, dict] = {}
    for rank, rank_rows in enumerate(gathered):
        for r in rank_rows:
            if r["id"] in rows:
                raise RuntimeError(f"rank {rank} returned prompt {r['id']!r} of cell {what} twice")
            rows[r["id"]] = r
    missing = [p.id for p in prompts if p.id not in rows]
    if missing:
        raise RuntimeError(f"cell {what}: no row for {len(missing)} prompts (first {missing[0]!r})")
    return [rows[p.id] for p in prompts]
