"""Alignment statistics: how the dense model's channels and residual stream differ on
harmful versus harmless prompts. AAPP's critical channels and risk gates read these.

Where we look. Each prompt is rendered with the chat template, and statistics are
taken at its *post-instruction* positions: the template tokens after the user's
message (e.g. Qwen's `<|im_end|>\\n<|im_start|>assistant\\n`). The model decides there
whether to refuse (Arditi et al. 2024 find the refusal direction at exactly those
positions), and they are the same tokens for every prompt, so harmful and harmless
differ in what the model read, not in where we look.

Tensors written under `align.` (L layers, C channels of a site, D hidden size):
  align.{attn,mlp}.{harmful,harmless}.mean / .sq_mean   [L, C]  post-instruction
  align.resid.{harmful,harmless}.mean / .energy         [L, D]  block-input residual
  align.gate.{direction,kl}.{auroc,threshold}           [L]     in-sample, per layer
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from aapp.calibration.collect import Collector
from aapp.evaluation import metrics
from aapp.generation import encode
from aapp.models.loading import LoadedModel

SETS = ("harmful", "harmless")


def post_instruction_tokens(tokenizer) -> int:
    """How many tokens the chat template puts after the user's message (1 without a template).

    Counted in context: the tokens of the whole rendered prompt past those it shares with
    the prompt cut at the message's end. Tokenizing the tail alone would miscount where a
    tokenizer treats the start of a text specially (SentencePiece's prefix space: LLaMA-2's
    " [/INST]" alone is one token longer than after a message).
    """
    if not getattr(tokenizer, "chat_template", None):
        return 1
    message = "Tell me about the weather."
    text = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                         add_generation_prompt=True)
    end = text.rindex(message) + len(message)
    whole = tokenizer(text, add_special_tokens=False).input_ids
    head = tokenizer(text[:end], add_special_tokens=False).input_ids
    shared = 0
    while shared < min(len(whole), len(head)) and whole[shared] == head[shared]:
        shared += 1
    return max(1, len(whole) - shared)


class _ResidualFeatures:
    """Per-prompt mean residual over post-instruction positions, at every layer input."""

    def __init__(self, loaded: LoadedModel, counted: Callable[[], torch.Tensor]):
        self.rows: list[torch.Tensor] = []  # per batch: [B, L, D]
        self._batch: dict[int, torch.Tensor] = {}
        self._handles = []
        for i in range(loaded.geometry.num_layers):
            layer = loaded.adapter.layer_parts(loaded.model, i).layer
            self._handles.append(layer.register_forward_pre_hook(self._hook(i, counted), with_kwargs=True))
        self.num_layers = loaded.geometry.num_layers

    def _hook(self, i, counted):
        def hook(module, args, kwargs):
            x = kwargs.get("hidden_states", args[0] if args else None)
            m = counted().to(x.dtype)[..., None]
            self._batch[i] = ((x * m).sum(1) / m.sum(1).clamp(min=1)).float().cpu()
        return hook

    def end_batch(self) -> None:
        self.rows.append(torch.stack([self._batch[i] for i in range(self.num_layers)], dim=1))
        self._batch.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@torch.inference_mode()
def collect_set(loaded: LoadedModel, prompts: Sequence[str], batch_size: int = 8,
                on_batch: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """Statistics of one prompt set; see the module docstring for what and where."""
    n_post = post_instruction_tokens(loaded.tokenizer)
    post = Collector(loaded, positions=f"last:{n_post}")
    feats = _ResidualFeatures(loaded, lambda: post._token_mask)
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            ids, attn = encode(loaded.tokenizer, chunk, loaded.device)
            loaded.model(input_ids=ids, attention_mask=attn, use_cache=False, logits_to_keep=1)
            feats.end_batch()
            if on_batch:
                on_batch(len(chunk))
    finally:
        post.remove()
        feats.remove()
    out = {}
    for site in ("attn", "mlp"):
        out[f"{site}.mean"] = post.moments[site].mean()
        out[f"{site}.sq_mean"] = post.moments[site].sq_mean()
    features = torch.cat(feats.rows)  # [N, L, D]
    out["resid.mean"] = features.mean(0)
    out["resid.energy"] = features.square().mean(0)
    out["_features"] = features
    return out


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    value = metrics.auroc(pos.tolist(), neg.tolist())
    return float("nan") if value is None else value


def best_threshold(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """The cut that maximises balanced accuracy (midpoint between neighbouring scores)."""
    scores = torch.cat([pos, neg]).sort().values
    cuts = torch.cat([scores[:1] - 1, (scores[1:] + scores[:-1]) / 2, scores[-1:] + 1])
    tpr = (pos[None, :] > cuts[:, None]).float().mean(1)
    tnr = (neg[None, :] <= cuts[:, None]).float().mean(1)
    return float(cuts[torch.argmax(tpr + tnr)])


def direction_scores(features: torch.Tensor, harmful_mean: torch.Tensor, harmless_mean: torch.Tensor) -> torch.Tensor:
    """Projection of per-prompt residuals [N, L, D] on each layer's unit refusal direction -> [N, L]."""
    d = harmful_mean - harmless_mean
    d = d / d.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    centre = (harmful_mean + harmless_mean) / 2
    return ((features - centre) * d).sum(-1)


def channel_distribution(energy: torch.Tensor) -> torch.Tensor:
    """Normalise per-channel energy [..., D] into a distribution over channels."""
    e = energy.float().clamp(min=0) + 1e-8
    return e / e.sum(-1, keepdim=True)


def kl_scores(features: torch.Tensor, harmful_energy: torch.Tensor, harmless_energy: torch.Tensor) -> torch.Tensor:
    """KL(input || safe) - KL(input || harmful) per prompt and layer -> [N, L]; > 0 means closer to harmful."""
    p = channel_distribution(features.square())
    qh, qs = channel_distribution(harmful_energy), channel_distribution(harmless_energy)
    kl_s = (p * (p.log() - qs.log())).sum(-1)
    kl_h = (p * (p.log() - qh.log())).sum(-1)
    return kl_s - kl_h


def alignment_tensors(harmful: dict, harmless: dict) -> dict[str, torch.Tensor]:
    """Flatten both sets' statistics under `align.` and calibrate both gates per layer."""
    out = {}
    for name, stats in (("harmful", harmful), ("harmless", harmless)):
        for key, value in stats.items():
            if not key.startswith("_"):
                site, stat = key.split(".", 1)
                out[f"align.{site}.{name}.{stat}"] = value
    fh, fs = harmful["_features"], harmless["_features"]
    gates = {
        "direction": lambda f: direction_scores(f, harmful["resid.mean"], harmless["resid.mean"]),
        "kl": lambda f: kl_scores(f, harmful["resid.energy"], harmless["resid.energy"]),
    }
    for gate, score in gates.items():
        sh, ss = score(fh), score(fs)
        layers = sh.shape[1]
        out[f"align.gate.{gate}.auroc"] = torch.tensor([auroc(sh[:, i], ss[:, i]) for i in range(layers)])
        out[f"align.gate.{gate}.threshold"] = torch.tensor([best_threshold(sh[:, i], ss[:, i]) for i in range(layers)])
    return out
