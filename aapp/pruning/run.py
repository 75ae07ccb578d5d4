"""Prompts in, pruned generations out: the library behind `aapp prune`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from aapp.calibration.store import Calibration
from aapp.generation import batched, generate_batch
from aapp.methods import Method
from aapp.models.loading import LoadedModel
from aapp.pruning.engine import PruneOptions, prune_model


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    batch_size: int = 8


def generate_rows(loaded: LoadedModel, prompts: Sequence, method: Method, options: PruneOptions,
                  calib: Calibration | None, settings: GenerationSettings = GenerationSettings(),
                  on_batch: Callable[[int], None] | None = None) -> Iterator[dict]:
    """Yield one output row per prompt (aapp.prompts.Prompt objects), batch by batch.

    FLOPs in a row are its share of its batch (batch FLOPs / batch size); latency is
    the batch's wall time, since rows of a batch finish together.
    """
    handle = prune_model(loaded, method, options, calib)
    try:
        for chunk in batched(list(prompts), settings.batch_size):
            out = generate_batch(loaded.model, loaded.tokenizer, [p.text for p in chunk],
                                 max_new_tokens=settings.max_new_tokens)
            rec = handle.record
            n = len(chunk)
            share = {k: v / n for k, v in rec.flops.to_dict().items() if k != "fraction"}
            share["fraction"] = rec.flops.fraction
            kept = full_kept(loaded, rec.kept)
            for j, p in enumerate(chunk):
                row = {
                    "id": p.id, "prompt": p.text, "label": p.label, "completion": out.completions[j],
                    "method": method.name, "ratio": options.ratio,
                    "flops": share, "kept": kept,
                    "latency_s": out.prefill_s + out.decode_s, "prefill_s": out.prefill_s, "decode_s": out.decode_s,
                    "prompt_tokens": out.prompt_tokens[j], "new_tokens": out.new_tokens[j],
                }
                if rec.method_info:
                    row.update(rec.method_info)
                yield row
            if on_batch:
                on_batch(n)
    finally:
        handle.remove()


def full_kept(loaded: LoadedModel, kept: list[dict]) -> dict:
    """Per-layer kept counts as three lists; dense layers show their full size."""
    g = loaded.geometry
    full = {"heads": g.num_heads, "kv_heads": g.num_kv_heads, "channels": g.intermediate_size}
    rows = [kept[i] if i < len(kept) and kept[i] else full for i in range(g.num_layers)]
    return {k: [r[k] for r in rows] for k in full}
