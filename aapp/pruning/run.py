"""Prompts in, pruned generations out: the library behind `aapp prune`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from aapp.calibration.store import Calibration
from aapp.generation import batched, encode, generate_batch, positions
from aapp.methods import Method
from aapp.models.loading import LoadedModel
from aapp.pruning import flops
from aapp.pruning.engine import PrunedModel, PruneOptions, prune_model
from aapp.pruning.flops import FlopCount


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    batch_size: int = 8


def generate_rows(loaded: LoadedModel, prompts: Sequence, method: Method, options: PruneOptions,
                  calib: Calibration | None, settings: GenerationSettings = GenerationSettings(),
                  on_batch: Callable[[int], None] | None = None) -> Iterator[dict]:
    """Yield one output row per prompt (aapp.prompts.Prompt objects), batch by batch.

    FLOPs and `latency_s` in a row are its share of its batch (batch total / batch
    size), so sums over rows are totals; `batch_latency_s` is the batch's wall time.
    """
    handle = prune_model(loaded, method, options, calib)
    split = getattr(method, "splits_batches", False)
    try:
        for chunk in batched(list(prompts), settings.batch_size):
            if split:
                rows = _per_sample_rows(handle, chunk, settings)
            else:
                rows = _batch_rows(handle, chunk, settings)
            yield from rows
            if on_batch:
                on_batch(len(chunk))
    finally:
        handle.remove()


def _batch_rows(handle: PrunedModel, chunk: Sequence, settings: GenerationSettings,
                extra_flops: FlopCount | None = None) -> list[dict]:
    """Generate one (sub-)batch and turn it into rows."""
    loaded, method = handle.loaded, handle.method
    out = generate_batch(loaded.model, loaded.tokenizer, [p.text for p in chunk],
                         max_new_tokens=settings.max_new_tokens)
    rec = handle.record
    total = FlopCount()
    total.add(rec.flops)
    if extra_flops is not None:
        total.add(extra_flops)
    n = len(chunk)
    share = {k: v / n for k, v in total.to_dict().items() if k != "fraction"}
    share["fraction"] = total.fraction
    kept = full_kept(loaded, rec.kept)
    info = method.batch_info()
    sample_scores = method.sample_info(len(chunk))
    rows = []
    for j, p in enumerate(chunk):
        row = {
            "id": p.id, "prompt": p.text, "label": p.label, "set": p.source, "completion": out.completions[j],
            "method": method.name, "ratio": handle.options.ratio,
            "flops": share, "kept": kept,
            "latency_s": (out.prefill_s + out.decode_s) / n, "batch_latency_s": out.prefill_s + out.decode_s,
            "prefill_s": out.prefill_s, "decode_s": out.decode_s,
            "prompt_tokens": out.prompt_tokens[j], "new_tokens": out.new_tokens[j],
        }
        if p.truncated:
            row["truncated_tokens"] = p.truncated
        row.update(info)
        for key, values in sample_scores.items():  # the batch's facts, refined per sample
            row[key] = {**row.get(key, {}), **values[j]}
        rows.append(row)
    return rows


class _GateReached(Exception):
    pass


def gate_scores(handle: PrunedModel, texts: Sequence[str]):
    """Per-sample gate scores from a forward that stops at the gate layer; returns (scores, flops)."""
    loaded, method = handle.loaded, handle.method
    layer = loaded.adapter.layers(loaded.model)[method.gate_layer]

    def stop(module, args, kwargs):
        raise _GateReached

    h = layer.register_forward_pre_hook(stop, with_kwargs=True)
    ids, attn = encode(loaded.tokenizer, texts, loaded.device)
    try:
        with torch.inference_mode():
            loaded.model(input_ids=ids, attention_mask=attn, position_ids=positions(attn), use_cache=False)
    except _GateReached:
        pass
    finally:
        h.remove()
    tokens = ids.shape[0] * ids.shape[1]
    cost = flops.dense_block_flops(loaded.geometry, tokens, (ids.shape[1] + 1) / 2) * method.gate_layer
    return method.last_sample_scores, FlopCount(probe=cost)


def _per_sample_rows(handle: PrunedModel, chunk: Sequence, settings: GenerationSettings) -> list[dict]:
    """Split the batch into gated and ungated sub-batches by each prompt's own gate score."""
    method = handle.method
    scores, gate_cost = gate_scores(handle, [p.text for p in chunk])
    rows: dict[int, dict] = {}
    groups = {True: [i for i in range(len(chunk)) if scores[i] > 0],
              False: [i for i in range(len(chunk)) if scores[i] <= 0]}
    try:
        for fired, idx in groups.items():
            if not idx:
                continue
            method.forced = fired
            share = FlopCount(probe=gate_cost.probe * len(idx) / len(chunk))
            sub = _batch_rows(handle, [chunk[i] for i in idx], settings, extra_flops=share)
            for i, row in zip(idx, sub):
                row["gate"] = {**row["gate"], "fired": fired, "score": float(scores[i]),
                               "sample_score": float(scores[i]), "per_sample": True}
                rows[i] = row
    finally:
        method.forced = None
    return [rows[i] for i in range(len(chunk))]


def full_kept(loaded: LoadedModel, kept: list[dict]) -> dict:
    """Per-layer kept counts as three lists; dense layers show their full size."""
    g = loaded.geometry
    full = {"heads": g.num_heads, "kv_heads": g.num_kv_heads, "channels": g.intermediate_size}
    rows = [kept[i] if i < len(kept) and kept[i] else full for i in range(g.num_layers)]
    return {k: [r[k] for r in rows] for k in full}
