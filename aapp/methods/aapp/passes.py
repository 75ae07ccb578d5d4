"""AAPP's calibration passes: the dense model's channels and residual stream on one prompt set
(harmful or harmless). AAPP compares the two sets for its critical channels and fits its risk
gates on the per-prompt residual features collected here.

Where we look. Each prompt is rendered with the chat template, and statistics are
taken at its *post-instruction* positions: the template tokens after the user's
message (e.g. Qwen's `<|im_end|>\\n<|im_start|>assistant\\n`). The model decides there
whether to refuse (Arditi et al. 2024 find the refusal direction at exactly those
positions), and they are the same tokens for every prompt, so harmful and harmless
differ in what the model read, not in where we look.

What one set gives (L layers, C channels of a site, D hidden size, N prompts): the mean and
mean square at both sites [L, C], of the block-input residual [L, D], and each prompt's
post-instruction mean residual at every layer [N, L, D] (kept in memory only, for fitting
gates; the file stores the moments, see aapp.methods.aapp.store).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from aapp.calibration.collect import Collector, counted_tokens, token_mean
from aapp.calibration.store import SiteStats
from aapp.methods.aapp.store import PromptSetStats
from aapp.generation import encode
from aapp.models.loading import LoadedModel


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
            layer = loaded.adapter.layers(loaded.model)[i]  # not layer_parts: a pruning handle swaps its parts
            self._handles.append(layer.register_forward_pre_hook(self._hook(i, counted), with_kwargs=True))
        self.num_layers = loaded.geometry.num_layers

    def _hook(self, i, counted):
        def hook(module, args, kwargs):
            x = kwargs.get("hidden_states", args[0] if args else None)
            self._batch[i] = token_mean(x, counted())
        return hook

    def end_batch(self) -> None:
        self.rows.append(torch.stack([self._batch[i] for i in range(self.num_layers)], dim=1))
        self._batch.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@dataclass(frozen=True)
class PromptSetPass:
    """What a dense pass over one prompt set measured."""

    stats: PromptSetStats
    features: torch.Tensor  # [N, L, D] each prompt's post-instruction mean residual per layer


@torch.inference_mode()
def collect_set(loaded: LoadedModel, prompts: Sequence[str], batch_size: int = 8,
                on_batch: Callable[[int], None] | None = None) -> PromptSetPass:
    """Statistics of one prompt set; see the module docstring for what and where."""
    n_post = post_instruction_tokens(loaded.tokenizer)
    post = Collector(loaded, positions=f"last:{n_post}")
    feats = _ResidualFeatures(loaded, lambda: post._token_mask)
    try:
        _forward_prompts(loaded, prompts, batch_size, feats, on_batch)
    finally:
        post.remove()
        feats.remove()
    sites = {site: SiteStats(mean=m.mean(), sq_mean=m.sq_mean()) for site, m in post.moments.items()}
    features = torch.cat(feats.rows)  # [N, L, D]
    resid = SiteStats(mean=features.mean(0), sq_mean=features.square().mean(0))
    return PromptSetPass(PromptSetStats(attn=sites["attn"], mlp=sites["mlp"], resid=resid), features)


@torch.inference_mode()
def prompt_features(loaded: LoadedModel, prompts: Sequence[str], n_post: int, batch_size: int = 8,
                    on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """Each prompt's post-instruction mean residual at every layer input -> [N, L, D], as
    `collect_set` measures it (the same forward, without the site statistics), through whatever
    runs in `loaded.model`: under a pruning handle (aapp.pruning.engine), the pruned prefill."""
    mask: dict[str, torch.Tensor] = {}
    feats = _ResidualFeatures(loaded, lambda: mask["counted"])
    try:
        _forward_prompts(loaded, prompts, batch_size, feats, on_batch,
                         on_encode=lambda attn: mask.update(counted=counted_tokens(attn.bool(), f"last:{n_post}")))
    finally:
        feats.remove()
    return torch.cat(feats.rows)


def _forward_prompts(loaded: LoadedModel, prompts: Sequence[str], batch_size: int, feats: _ResidualFeatures,
                     on_batch: Callable[[int], None] | None,
                     on_encode: Callable[[torch.Tensor], None] | None = None) -> None:
    """Chat-formatted prefills of `prompts`, batch by batch, for hooks to read; `on_encode` sees each
    batch's attention mask before its forward."""
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        ids, attn = encode(loaded.tokenizer, chunk, loaded.device)
        if on_encode:
            on_encode(attn)
        loaded.model(input_ids=ids, attention_mask=attn, use_cache=False, logits_to_keep=1)
        feats.end_batch()
        if on_batch:
            on_batch(len(chunk))


class WindowRecorder:
    """`window_features` read from someone else's forwards: while `recording()`, every forward of
    `loaded.model` on raw token windows (no padding, no chat template) adds its windows and their
    features. `aapp calibrate` records the general-text pass so, as the same windows are the fitted
    gate's prose side, it need not run them twice (`features_of`)."""

    def __init__(self, loaded: LoadedModel, n_post: int):
        self.loaded, self.n_post = loaded, n_post
        self.windows: list[torch.Tensor] = []
        self._counted: torch.Tensor | None = None
        self._features: _ResidualFeatures | None = None

    @contextmanager
    def recording(self) -> Iterator["WindowRecorder"]:
        self._features = _ResidualFeatures(self.loaded, lambda: self._counted)
        model = self.loaded.model
        handles = [model.register_forward_pre_hook(self._begin, with_kwargs=True),
                   model.register_forward_hook(lambda *_: self._features.end_batch())]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self._features.remove()

    def _begin(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if kwargs.get("attention_mask") is not None:
            raise ValueError("WindowRecorder reads unpadded windows; this forward has an attention mask")
        self.windows.append(ids.detach().cpu())
        self._counted = counted_tokens(torch.ones(1, ids.shape[1], dtype=torch.bool), f"last:{self.n_post}").to(ids.device)

    def features_of(self, windows: torch.Tensor) -> torch.Tensor | None:
        """The features [N, L, D] of exactly these windows [N, S], if they are what was recorded."""
        if not self.windows or self._features is None or not torch.equal(torch.cat(self.windows), windows.cpu()):
            return None
        return torch.cat(self._features.rows)


@torch.inference_mode()
def window_features(loaded: LoadedModel, windows: torch.Tensor, n_post: int, batch_size: int = 8) -> torch.Tensor:
    """The same per-row features for raw token windows [N, S] (no chat template): the mean
    residual over each window's last `n_post` tokens at every layer input -> [N, L, D]. A gate
    reads these positions of any input it sees, so prose it must not fire on is calibrated here."""
    counted = counted_tokens(torch.ones(1, windows.shape[1], dtype=torch.bool), f"last:{n_post}")
    feats = _ResidualFeatures(loaded, lambda: counted.to(loaded.device))
    try:
        for i in range(0, len(windows), batch_size):
            loaded.model(input_ids=windows[i : i + batch_size].to(loaded.device), use_cache=False, logits_to_keep=1)
            feats.end_batch()
    finally:
        feats.remove()
    return torch.cat(feats.rows)
