"""Perplexity of a (possibly pruned) model on held-out prose.

Text is packed into non-overlapping windows of `seq_len` tokens (the same packing as
calibration), each window is one independent sequence, and the score is the mean
next-token NLL over every predicted token. Each forward runs without a KV cache, so
under a `PrunedModel` every batch is a fresh batch: the engine probes and selects for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aapp.calibration.run import pack_tokens
from aapp.errors import AappError, InputError
from aapp.chat import render_all
from aapp.models.loading import LoadedModel
from aapp.methods.report import FlopCount
from aapp.pruning.engine import run_routed

# Logits of a [B, S, V] batch are scored this many positions at a time, so a 150k
# vocabulary at batch 4 x 256 never holds its full float32 log-softmax at once.
_LOSS_CHUNK = 64


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float          # mean NLL per predicted token, in nats
    tokens: int         # predicted tokens: windows * (seq_len - 1)
    windows: int
    flops_fraction: float | None = None  # (pruned + probe + bias) / dense over all batches, when a handle is given

    def to_dict(self) -> dict:
        return {"ppl": self.ppl, "nll": self.nll, "tokens": self.tokens, "windows": self.windows,
                "flops_fraction": self.flops_fraction}


def perplexity(loaded: LoadedModel, texts: Sequence[str], *, seq_len: int = 256, max_windows: int | None = None,
               batch_size: int = 4, handle=None) -> PerplexityResult:
    """Perplexity of `loaded` on `texts`; pruned when a `PrunedModel` handle is active on it.

    `handle` (the `PrunedModel` wrapping `loaded`, if any) adds the FLOPs fraction to the result,
    and lets a method that routes windows apart run each group under its route; the model is
    pruned by the handle's existence, not by this argument.
    """
    if seq_len < 2:
        raise InputError(f"seq_len must be at least 2 (one token predicts the next), got {seq_len}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if max_windows is not None and max_windows < 1:
        raise InputError(f"max_windows must be at least 1, got {max_windows}")
    if handle is not None and handle.loaded is not loaded:
        raise AappError("the pruning handle wraps another model than the one being evaluated")
    try:
        windows = pack_tokens(loaded.tokenizer, texts, max_windows if max_windows is not None else 2**62, seq_len)
    except InputError:
        raise InputError(f"the text is shorter than one perplexity window of {seq_len} tokens") from None
    return window_perplexity(loaded, windows, batch_size=batch_size, handle=handle)


@torch.inference_mode()
def window_perplexity(loaded: LoadedModel, windows: torch.Tensor, *, batch_size: int = 4,
                      handle=None) -> PerplexityResult:
    """Perplexity over pre-packed windows [N, S] of token ids."""
    total_nll = 0.0  # python float (double): the sum is exact enough and independent of batch size
    count = 0
    total_flops = FlopCount()
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size].to(loaded.device)
        if handle is None:
            total_nll += _window_nll(loaded, chunk)
        else:  # a router may split the batch: each group of windows runs under its own route
            for run in run_routed(handle, len(chunk), lambda g: _window_nll(loaded, chunk[g.rows])):
                total_nll += run.result
                total_flops.add(run.reports[0].flops.total)
        count += chunk.shape[0] * (chunk.shape[1] - 1)
    nll = total_nll / count
    return PerplexityResult(ppl=math.exp(nll), nll=nll, tokens=count, windows=len(windows),
                            flops_fraction=total_flops.fraction if handle is not None else None)


def _window_nll(loaded: LoadedModel, chunk: torch.Tensor) -> float:
    # Per-row position ids, so RoPE tables have a batch dimension the probe can index by sample.
    pos = torch.arange(chunk.shape[1], device=chunk.device).expand(chunk.shape[0], -1)
    logits = loaded.model(input_ids=chunk, position_ids=pos, use_cache=False).logits  # [B, S, V]
    return _sum_nll(logits, chunk)


def _sum_nll(logits: torch.Tensor, ids: torch.Tensor) -> float:
    # logits: [B, S, V] predict ids[:, 1:] from positions 0..S-2
    total = 0.0
    S = ids.shape[1]
    for s in range(0, S - 1, _LOSS_CHUNK):
        e = min(s + _LOSS_CHUNK, S - 1)
        lg = logits[:, s:e].float()
        total += F.cross_entropy(lg.reshape(-1, lg.shape[-1]), ids[:, s + 1 : e + 1].reshape(-1),
                                 reduction="sum").double().item()
    return total


@torch.inference_mode()
def answer_perplexity(loaded: LoadedModel, prompts: Sequence[str], answers: Sequence[str], *,
                      batch_size: int = 8) -> PerplexityResult:
    """Perplexity of `answers` given their chat-formatted `prompts`, over the answer tokens only.

    What a chat user pays for pruning: scored on the dense model's own answers, it asks how
    surprised the pruned model is by what the dense one said. Rows are left-padded as in
    generation, so a PrunedModel probes and selects per batch exactly as when it answers.
    """
    if len(prompts) != len(answers) or not prompts:
        raise InputError(f"answer perplexity needs as many answers as prompts, got {len(answers)} and {len(prompts)}")
    tok = loaded.tokenizer
    heads, templated = render_all(tok, prompts)
    total_nll, count = 0.0, 0
    for i in range(0, len(prompts), batch_size):
        rows = []
        for head, answer in zip(heads[i : i + batch_size], answers[i : i + batch_size]):
            h = tok(head, add_special_tokens=not templated)["input_ids"]
            a = tok(answer, add_special_tokens=False)["input_ids"]
            rows.append((h + a, len(h)))
        width = max(len(ids) for ids, _ in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        scored = torch.zeros_like(ids, dtype=torch.bool)  # tokens whose prediction counts: the answer's
        for r, (seq, n_head) in enumerate(rows):
            ids[r, width - len(seq):] = torch.tensor(seq)
            mask[r, width - len(seq):] = 1
            scored[r, width - len(seq) + n_head:] = True
        ids, mask, scored = ids.to(loaded.device), mask.to(loaded.device), scored.to(loaded.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = loaded.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                              reduction="none").view(ids.shape[0], -1)
        keep = scored[:, 1:]
        total_nll += nll[keep].double().sum().item()
        count += int(keep.sum())
    if not count:
        raise InputError("every answer is empty: nothing to score")
    nll = total_nll / count
    return PerplexityResult(ppl=math.exp(nll), nll=nll, tokens=count, windows=len(prompts))
