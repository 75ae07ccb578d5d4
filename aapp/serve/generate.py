"""One request's decode loop: prefill, then token by token with greedy or seeded sampling, stop
strings, streaming and cancellation.

Unlike aapp.generation's batch loop, this one runs a single sequence (no padding: its tokens are
what it would get alone, by construction) and hands text out as it is made. It calls the model's
own forward, so a pruned model decodes through the same code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from aapp.generation import eos_ids
from aapp.models.kv_cache import cache_kwarg, new_cache
from aapp.serve.schemas import Sampling


@dataclass(frozen=True)
class Outcome:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string), "length" (max_tokens) or "cancelled"
    prompt_tokens: int
    completion_tokens: int


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """logits: [V] for the last position."""
    if sampling.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = sorted_p.cumsum(0) - sorted_p >= sampling.top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def generate(model, tokenizer, input_ids: torch.Tensor, sampling: Sampling,
             on_text: Callable[[str], None] | None = None,
             cancelled: Callable[[], bool] = lambda: False) -> Outcome:
    """Decode `input_ids` [1, S]. `on_text` gets each new piece of text once no stop string can
    still begin in it; `cancelled` is polled before every step."""
    device = input_ids.device
    stops = set(eos_ids(model, tokenizer))
    generator = None
    if sampling.temperature > 0:
        generator = torch.Generator(device=device)
        # Unseeded requests sample from fresh entropy, never from a state other requests moved.
        generator.manual_seed(sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(8), "little"))
    hold = max((len(s) for s in sampling.stop), default=1) - 1
    cache = {cache_kwarg(model): new_cache(model)}
    n_prompt = input_ids.shape[1]
    attn = torch.ones_like(input_ids)
    logits = model(input_ids=input_ids, attention_mask=attn, position_ids=torch.arange(n_prompt, device=device)[None],
                   **cache, use_cache=True, logits_to_keep=1).logits
    tokens: list[int] = []
    text, sent, reason = "", 0, "length"
    for step in range(sampling.max_tokens):
        if cancelled():
            reason = "cancelled"
            break
        tok = next_token(logits[0, -1], sampling, generator)
        tokens.append(tok)
        if tok in stops:
            reason = "stop"
            break
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        cut = _first_stop(text, sampling.stop, max(0, sent - hold))
        if cut is not None:
            text, reason = text[:cut], "stop"
            break
        # Hold back what a stop string may still start in, and a multi-byte character still incomplete.
        safe = len(text) - hold
        while safe > sent and text[safe - 1] == "\ufffd":
            safe -= 1
        if on_text and safe > sent:
            on_text(text[sent:safe])
            sent = safe
        if step == sampling.max_tokens - 1:
            break
        attn = torch.cat([attn, attn[:, :1]], dim=1)
        logits = model(input_ids=torch.tensor([[tok]], device=device), attention_mask=attn,
                       position_ids=torch.tensor([[n_prompt + step]], device=device), **cache, use_cache=True).logits
    if reason != "cancelled" and on_text and len(text) > sent:
        on_text(text[sent:])
    return Outcome(text, reason, n_prompt, len(tokens))


def _first_stop(text: str, stops: tuple[str, ...], start: int) -> int | None:
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None
