"""Scale-out for the sweep: one process per device under `torchrun`, or a single process.

`torchrun --nproc-per-node N aapp eval-refusal ...` starts N copies of the command with
RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address) in their environment.
`session()` reads them, joins the process group (gloo for CPU, nccl for CUDA, one GPU
per local rank) and hands back a `Dist`; without them it hands back a single-process
`Dist` whose collectives are identities, so callers have one code path.

What is sharded, and why whole batches: Probe Pruning picks its channels from a probe
of the *batch* (its highest-norm samples and positions), so a prompt's completion
depends on which prompts share its batch. Dealing prompts out one by one would give each
rank batches no single-process run ever makes. `owns_batch` deals out whole batches
instead (batch b to rank b % N): every batch is formed exactly as a single process forms
it, so every row, and every summary, is the same as with one process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from aapp.errors import InputError

# Ranks wait for each other at the end of every cell (and at start-up checks); a rank with
# more or slower batches, or a whole stateful cell, can keep the others waiting for hours,
# far past torch's default 10-30 minute collective timeout.
DEFAULT_TIMEOUT = timedelta(hours=48)


@dataclass(frozen=True)
class Dist:
    """This process's place in the run. `backend` None: a single process, no group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.backend is not None

    def owns_batch(self, batch_index: int) -> bool:
        """Whole batches, round-robin: batch b runs on rank b % world_size."""
        return batch_index % self.world_size == self.rank

    def owner(self, item_index: int) -> int:
        """The rank that runs an indivisible item (a stateful cell, a perplexity pass)."""
        return item_index % self.world_size

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` on rank 0, in rank order; None on the other ranks."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (pickled; keep it small)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def decide(self, check: Callable[[], None]) -> None:
        """Rank 0 runs `check` (file-system state); every rank then fails, or goes on, together."""
        if not self.is_main:
            message = self.broadcast(None)
            if message is not None:
                raise InputError(message)
            return
        try:
            check()
        except Exception as e:
            self.broadcast(str(e) or type(e).__name__)
            raise
        self.broadcast(None)


def env_ranks(environ: dict[str, str] | None = None) -> Dist | None:
    """The rank layout torchrun put in the environment, or None when not launched by it."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise InputError(f"RANK={env['RANK']!r}, WORLD_SIZE={env['WORLD_SIZE']!r}: expected integers "
                         "(as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise InputError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}: not a valid rank layout")
    return Dist(rank=rank, world_size=world, local_rank=local)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextmanager
def session(device: str = "auto", *, timeout: timedelta = DEFAULT_TIMEOUT) -> Iterator[Dist]:
    """Join the torchrun process group for the length of the block (a no-op without torchrun).

    `device` is the run's --device: CUDA ranks use nccl and pin GPU LOCAL_RANK (so the
    model's "cuda" means this rank's GPU); CPU ranks use gloo. A group the caller already
    initialised is used as it is and left open.
    """
    import torch.distributed as dist

    from aapp.models.loading import resolve_device

    layout = env_ranks()
    if layout is None or layout.world_size == 1:
        yield Dist()
        return
    dev = resolve_device(device)
    if dev.type == "cuda":
        if layout.local_rank >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {layout.local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                             "start at most one process per GPU")
        torch.cuda.set_device(layout.local_rank)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend_for(dev), timeout=timeout)
    try:
        yield Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=layout.local_rank,
                   backend=dist.get_backend())
    finally:
        if owned:
            dist.destroy_process_group()
