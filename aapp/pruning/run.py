"""Prompts in, pruned generations out: the library behind `aapp prune`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

from aapp.calibration.store import Calibration
from aapp.context import prompt_tokens
from aapp.generation import batched, generate_batch
from aapp.methods.base import Method
from aapp.models.loading import LoadedModel
from aapp.pruning.engine import PrunedModel, PruneOptions, RowGroup, prune_model, run_routed
from aapp.provenance import versions

PROVENANCE = "provenance"  # the row field that says what made the row (see run_provenance)


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    batch_size: int = 8
    # Batch prompts of similar token length together: each batch is padded to its longest prompt.
    # 100 of the built-in jailbreaks (74 to 1,224 tokens, 51,944 in all) pad to 102,792 tokens in
    # batches of 8 as drawn and to 55,808 sorted. Sorting changes which prompts share a batch, and
    # so what a per-batch method decides for them.
    sort_by_length: bool = False


def run_provenance(loaded: LoadedModel, method: Method, options: PruneOptions, calib: Calibration | None,
                   settings: GenerationSettings) -> dict:
    """What made a run's rows, as plain JSON data: the model's identity, the method, ratio and every
    option it ran with, and the versions. The one place that decides what a row records of its run."""
    return {
        "model": {"name": loaded.name, "fingerprint": loaded.fingerprint},
        "method": method.name, "ratio": options.ratio,
        "options": {"prune": asdict(options), "method": {k: asdict(v) for k, v in sorted(method.settings().items())},
                    "generation": asdict(settings), "calibration": calib.digest() if calib is not None else None},
        "versions": versions(),
    }


def carries_state(method: Method, options: PruneOptions) -> bool:
    """Whether a batch's rows depend on the batches before it (a resumed run then replays them)."""
    return options.ema_momentum is not None or method.carries_state


def generate_rows(loaded: LoadedModel, prompts: Sequence, method: Method, options: PruneOptions,
                  calib: Calibration | None, settings: GenerationSettings = GenerationSettings(),
                  on_batch: Callable[[int], None] | None = None, start: int = 0) -> Iterator[dict]:
    """Yield one output row per prompt (aapp.prompts.Prompt objects), batch by batch.

    FLOPs and `latency_s` in a row are its share of its batch (batch total / batch
    size), so sums over rows are totals; `batch_latency_s` is the batch's wall time. Every
    row carries `run_provenance` under "provenance".

    The rows of the first `start` prompts are already written (a resumed run): they are not
    yielded, and a batch of only such prompts is not run unless the method carries state from
    batch to batch. Batches are formed over all prompts as in a run from the first, so the rows
    yielded are those that run would give.
    """
    prompts = list(prompts)
    order = list(range(len(prompts)))
    if settings.sort_by_length:
        lengths = [prompt_tokens(loaded.tokenizer, p.input) for p in prompts]
        order.sort(key=lengths.__getitem__)  # stable: equal lengths keep their input order
    done: dict[int, dict] = {}
    next_out = start
    replay = carries_state(method, options)
    provenance = run_provenance(loaded, method, options, calib, settings)
    handle = prune_model(loaded, method, options, calib)
    try:
        for indices in batched(order, settings.batch_size):
            if not replay and all(i < start for i in indices):
                continue
            chunk = [prompts[i] for i in indices]
            rows = dict(enumerate(run_batch(handle, chunk, settings)))
            done.update((indices[j], rows[j] | {PROVENANCE: provenance}) for j in range(len(chunk))
                        if indices[j] >= start)
            while next_out in done:  # rows leave in input order, as soon as that order allows
                yield done.pop(next_out)
                next_out += 1
            if on_batch:
                on_batch(sum(i >= start for i in indices))
    finally:
        handle.remove()


def run_batch(handle: PrunedModel, chunk: Sequence, settings: GenerationSettings) -> list[dict]:
    """One batch's output rows, in its order. With a router, rows the router decides alike run on
    together; a batch it splits runs again group by group (engine.run_routed), each row paying its
    share of the stopped prefill as `recompute` FLOPs."""
    runs = run_routed(handle, len(chunk), lambda group: _generate_group(handle, chunk, group, settings))
    rows = {i: _output_row(handle, chunk[i], out, j, report)
            for run in runs for out in [run.result] for j, (i, report) in enumerate(zip(run.group.rows, run.reports))}
    return [rows[j] for j in range(len(chunk))]


def _generate_group(handle: PrunedModel, chunk: Sequence, group: RowGroup, settings: GenerationSettings):
    """Generate one group of a batch's rows (the whole batch, unless a router split it)."""
    loaded = handle.loaded
    return generate_batch(loaded.model, loaded.tokenizer, [chunk[i].input for i in group.rows],
                          max_new_tokens=settings.max_new_tokens)


def _output_row(handle: PrunedModel, p, out, j: int, report) -> dict:
    """The output row of prompt `p`, row `j` of its group's generation `out`: the one writer of a row."""
    n = len(out.completions)
    row = {
        "id": p.id, "prompt": p.text, "label": p.label, "set": p.source, "completion": out.completions[j],
        "method": handle.method.name, "ratio": handle.options.ratio,
        **report.to_json(),
        "latency_s": (out.prefill_s + out.decode_s) / n, "batch_latency_s": out.prefill_s + out.decode_s,
        "prefill_s": out.prefill_s, "decode_s": out.decode_s,
        "prompt_tokens": out.prompt_tokens[j], "new_tokens": out.new_tokens[j],
    }
    if p.messages is not None:
        row["messages"] = [m.to_dict() for m in p.messages]
    if p.truncated:
        row["truncated_tokens"] = p.truncated
    return row
