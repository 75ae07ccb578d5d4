"""`aapp calibrate`: dense passes over general text that write the pruning history.

AAPP's alignment statistics are added by `aapp.methods.aapp.add_alignment`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

import aapp
from aapp.calibration.collect import Collector
from aapp.calibration.store import Calibration, SiteStats
from aapp.errors import InputError
from aapp.models.loading import LoadedModel


@dataclass(frozen=True)
class TextSettings:
    samples: int = 64
    seq_len: int = 256
    batch_size: int = 4


def pack_tokens(tokenizer, texts: Sequence[str], samples: int, seq_len: int) -> torch.Tensor:
    """Concatenate documents and cut `samples` windows of `seq_len` tokens (no padding).

    Calibration (like PP's C4 windows) wants full-length sequences, so documents are
    joined with blank lines rather than padded one per row.
    """
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False).input_ids
    n = min(samples, len(ids) // seq_len)
    if n == 0:
        raise InputError(f"calibration text has {len(ids)} tokens, fewer than one window of seq_len {seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


@torch.inference_mode()
def collect_text_stats(loaded: LoadedModel, windows: torch.Tensor, batch_size: int,
                       on_batch: Callable[[int], None] | None = None) -> dict[str, SiteStats]:
    """Mean and mean-square activation per channel at the o_proj and down_proj inputs."""
    col = Collector(loaded, positions="all")
    try:
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size].to(loaded.device)
            loaded.model(input_ids=chunk, use_cache=False, logits_to_keep=1)
            if on_batch:
                on_batch(len(chunk))
    finally:
        col.remove()
    return {site: SiteStats(mean=m.mean(), sq_mean=m.sq_mean()) for site, m in col.moments.items()}


def calibration_meta(loaded: LoadedModel, **extra) -> dict:
    g = loaded.geometry
    return {
        "model": loaded.name, "fingerprint": loaded.fingerprint, "model_type": g.model_type,
        "num_layers": g.num_layers, "aapp_version": aapp.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra,
    }


def calibrate_text(loaded: LoadedModel, texts: Sequence[str], settings: TextSettings, description: str,
                   on_batch: Callable[[int], None] | None = None) -> Calibration:
    windows = pack_tokens(loaded.tokenizer, texts, settings.samples, settings.seq_len)
    sites = collect_text_stats(loaded, windows, settings.batch_size, on_batch)
    meta = calibration_meta(loaded, text=description, seq_len=settings.seq_len, samples=len(windows),
                            tokens=int(windows.numel()))
    return Calibration(meta=meta, attn=sites["attn"], mlp=sites["mlp"])
