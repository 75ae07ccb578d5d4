"""Batched greedy generation: chat template, left padding, KV cache, stop at EOS.

The loop is ours rather than `model.generate()` so that prefill and decode are two
visible steps (pruning picks its channels at prefill and keeps them while decoding)
and so timings separate the two. It calls the model's own `forward`, so a pruned
model (aapp.pruning wraps modules in place) generates through the same code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from aapp.chat import ChatInput, render_all
from aapp.models.kv_cache import cache_kwarg, new_cache


@dataclass(frozen=True)
class BatchOutput:
    """Completions of one batch, in input order, with the batch's timings."""

    completions: list[str]
    prompt_tokens: list[int]
    new_tokens: list[int]
    prefill_s: float
    decode_s: float


def eos_ids(model, tokenizer) -> list[int]:
    ids = set()
    for src in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if src is None:
            continue
        ids.update([src] if isinstance(src, int) else src)
    return sorted(ids)


def encode(tokenizer, prompts: Sequence[ChatInput], device, use_chat_template: bool = True):
    """Tokenize a batch (plain prompts or conversations, see aapp.chat) with left padding;
    returns (input_ids, attention_mask)."""
    if use_chat_template:
        texts, templated = render_all(tokenizer, prompts)
    else:
        texts, templated = list(prompts), False
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=not templated)
    return enc.input_ids.to(device), enc.attention_mask.to(device)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, so a padded row sees the positions it would alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.inference_mode()
def generate_batch(
    model,
    tokenizer,
    prompts: Sequence[ChatInput],
    *,
    max_new_tokens: int = 128,
    use_chat_template: bool = True,
) -> BatchOutput:
    """Greedy-decode one batch. Deterministic: the same prompt gives the same tokens in any batch."""
    device = next(model.parameters()).device
    input_ids, attn = encode(tokenizer, prompts, device, use_chat_template)
    batch = input_ids.shape[0]
    stops = torch.tensor(eos_ids(model, tokenizer), device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(stops[0])

    cache_arg = {cache_kwarg(model): new_cache(model)}
    pos = positions(attn)
    t0 = time.perf_counter()
    logits = model(input_ids=input_ids, attention_mask=attn, position_ids=pos,
                   **cache_arg, use_cache=True, logits_to_keep=1).logits
    _sync(device)
    prefill_s = time.perf_counter() - t0

    out = torch.full((batch, max_new_tokens), pad, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    t0 = time.perf_counter()
    for step in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        out[:, step] = nxt
        lengths += (~done).long()
        done |= torch.isin(nxt, stops)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        pos = pos[:, -1:] + 1
        logits = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=pos,
                       **cache_arg, use_cache=True).logits
    _sync(device)
    decode_s = time.perf_counter() - t0

    prompt_len = input_ids.shape[1]
    stop_set = set(stops.tolist())
    completions = []
    for row, n in zip(out.tolist(), lengths.tolist()):
        toks = [t for t in row[:n] if t not in stop_set]
        completions.append(tokenizer.decode(toks, skip_special_tokens=True).strip())
    return BatchOutput(
        completions=completions,
        prompt_tokens=attn[:, :prompt_len].sum(-1).tolist(),
        new_tokens=lengths.tolist(),
        prefill_s=prefill_s,
        decode_s=decode_s,
    )


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

