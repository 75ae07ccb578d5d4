"""Prompts in, pruned generations out: the library behind `aapp prune`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from aapp.calibration.store import Calibration
from aapp.context import prompt_tokens
from aapp.generation import batched, generate_batch
from aapp.methods.base import BatchPart, Method
from aapp.models.loading import LoadedModel
from aapp.pruning.engine import PrunedModel, PruneOptions, prune_model
from aapp.pruning.flops import FlopCount


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    batch_size: int = 8
    # Batch prompts of similar token length together: each batch is padded to its longest prompt.
    # 100 of the built-in jailbreaks (74 to 1,224 tokens, 51,944 in all) pad to 102,792 tokens in
    # batches of 8 as drawn and to 55,808 sorted. Sorting changes which prompts share a batch, and
    # so what a per-batch method decides for them.
    sort_by_length: bool = False


def generate_rows(loaded: LoadedModel, prompts: Sequence, method: Method, options: PruneOptions,
                  calib: Calibration | None, settings: GenerationSettings = GenerationSettings(),
                  on_batch: Callable[[int], None] | None = None) -> Iterator[dict]:
    """Yield one output row per prompt (aapp.prompts.Prompt objects), batch by batch.

    FLOPs and `latency_s` in a row are its share of its batch (batch total / batch
    size), so sums over rows are totals; `batch_latency_s` is the batch's wall time.
    """
    prompts = list(prompts)
    order = list(range(len(prompts)))
    if settings.sort_by_length:
        lengths = [prompt_tokens(loaded.tokenizer, p.input) for p in prompts]
        order.sort(key=lengths.__getitem__)  # stable: equal lengths keep their input order
    done: dict[int, dict] = {}
    next_out = 0
    handle = prune_model(loaded, method, options, calib)
    try:
        for indices in batched(order, settings.batch_size):
            chunk = [prompts[i] for i in indices]
            texts = [p.input for p in chunk]
            parts = method.split_batch(len(chunk), lambda layer: handle.layer_input(layer, texts))
            rows: dict[int, dict] = {}
            for part in parts:
                with method.running(part):
                    rows.update(zip(part.rows, _part_rows(handle, chunk, part, settings)))
            done.update((indices[j], rows[j]) for j in range(len(chunk)))
            while next_out in done:  # rows leave in input order, as soon as that order allows
                yield done.pop(next_out)
                next_out += 1
            if on_batch:
                on_batch(len(chunk))
    finally:
        handle.remove()


def _part_rows(handle: PrunedModel, chunk: Sequence, part: BatchPart, settings: GenerationSettings) -> list[dict]:
    """Generate one part of a batch (the whole batch, or a sub-batch the method split off) into rows."""
    loaded, method = handle.loaded, handle.method
    prompts = [chunk[i] for i in part.rows]
    out = generate_batch(loaded.model, loaded.tokenizer, [p.input for p in prompts],
                         max_new_tokens=settings.max_new_tokens)
    total = FlopCount()
    total.add(handle.record.flops)
    total.probe += part.lookahead_flops
    n = len(prompts)
    share = {k: v / n for k, v in total.to_dict().items() if k != "fraction"}
    share["fraction"] = total.fraction
    kept = full_kept(loaded, handle.record.kept)
    info = method.batch_info()
    sample_info = method.sample_info(n)
    rows = []
    for j, p in enumerate(prompts):
        row = {
            "id": p.id, "prompt": p.text, "label": p.label, "set": p.source, "completion": out.completions[j],
            "method": method.name, "ratio": handle.options.ratio,
            "flops": share, "kept": kept,
            "latency_s": (out.prefill_s + out.decode_s) / n, "batch_latency_s": out.prefill_s + out.decode_s,
            "prefill_s": out.prefill_s, "decode_s": out.decode_s,
            "prompt_tokens": out.prompt_tokens[j], "new_tokens": out.new_tokens[j],
        }
        if p.messages is not None:
            row["messages"] = [m.to_dict() for m in p.messages]
        if p.truncated:
            row["truncated_tokens"] = p.truncated
        row.update(info)
        refinements = [{k: v[j] for k, v in sample_info.items()}]  # the batch's facts, refined per sample
        if part.row_info:
            refinements.append(part.row_info[j])  # and what the method decided for this row beforehand
        for extra in refinements:
            for key, values in extra.items():
                row[key] = {**row.get(key, {}), **values}
        rows.append(row)
    return rows


def full_kept(loaded: LoadedModel, kept: list[dict]) -> dict:
    """Per-layer kept counts as three lists; dense layers show their full size."""
    g = loaded.geometry
    full = {"heads": g.num_heads, "kv_heads": g.num_kv_heads, "channels": g.intermediate_size}
    rows = [kept[i] if i < len(kept) and kept[i] else full for i in range(g.num_layers)]
    return {k: [r[k] for r in rows] for k in full}
