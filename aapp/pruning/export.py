"""`aapp export --out DIR`: a static method's pruning written as a smaller HF checkpoint.

The engine prunes by masks; the export slices the weights instead, so DIR holds a plain
transformers model (safetensors, config, tokenizer) that loads with no aapp code and is
physically smaller and faster everywhere.

What is exported. `export_selection` picks masks a smaller checkpoint can hold (every layer
pruned alike, whole query heads per GQA group); the engine can run the very same masks, so
`prune_model(loaded, export_compatible(m), export_options(o), calib)` computes what the
exported checkpoint computes. This module slices the weights to those masks and writes them.

Biases. FLAP's compensation is a constant added to o_proj's and down_proj's outputs; it
becomes their bias. Which config and class can hold such biases is a family fact, so the
adapter decides (`ArchAdapter.export_target`): LLaMA holds both, Qwen2 is saved as LLaMA
when it needs them (the report says so), and Gemma-3's FLAP export is refused.

Output. DIR is built in a temporary directory beside it and renamed into place at the
end, so a failed export leaves nothing half-written. An existing DIR must be empty or a
previous aapp export (it holds `aapp_export.json`, the report); the latter is replaced.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch

from aapp.calibration.store import Calibration
from aapp.errors import AappError, InputError
from aapp.io import atomic_dir, check_dir_writable
from aapp.methods.base import Method, Selection
from aapp.methods.plan import check_ratio
from aapp.models.adapters import ExportTarget
from aapp.models.loading import LoadedModel
from aapp.pruning.engine import PruneOptions
# Re-exported: callers and tests import the export-compatible selection from here too.
from aapp.pruning.export_selection import (  # noqa: F401
    export_compatible, export_heads, export_options, export_plan, group_uniform_mask,
    layer_selections,
)
from aapp.pruning.forward import PrunedAttention, PrunedMLP

MARKER = "aapp_export.json"


@dataclass(frozen=True)
class ExportReport:
    """What was written to `out_dir`, and how it relates to the source model."""

    out_dir: str
    method: str
    ratio: float
    source: str
    source_fingerprint: str
    model_type: str            # of the saved checkpoint (may differ from the source's, see notes)
    num_layers: int
    num_attention_heads: int   # per layer (every layer alike)
    num_key_value_heads: int
    heads_per_group: int
    head_dim: int
    intermediate_size: int
    attention_bias: bool       # o_proj (and q/k/v) carry biases in the saved config
    mlp_bias: bool
    params_before: int
    params_after: int
    notes: tuple[str, ...]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["notes"] = list(self.notes)
        return d

    def summary(self) -> str:
        return (f"wrote {self.out_dir}: {self.method} r={self.ratio} as {self.model_type}, "
                f"{self.num_attention_heads} heads / {self.num_key_value_heads} kv, "
                f"{self.intermediate_size} MLP channels per layer, "
                f"{self.params_after / 1e6:.1f}M of {self.params_before / 1e6:.1f}M parameters")


# -- output directory -------------------------------------------------------------------------
def check_export_dir(out_dir: str | Path) -> None:
    """Fail before a long run when DIR cannot become an export (see the module docstring)."""
    p = check_dir_writable(out_dir, "export directory", replace=True)
    if p.is_dir() and any(p.iterdir()) and not (p / MARKER).is_file():
        raise InputError(f"{p} is a non-empty directory and not an earlier aapp export "
                         f"(no {MARKER}); choose a new or empty directory")


# Engine options an export has no use for, and why: given, each is an error rather than ignored.
NOT_EXPORTED = {
    "dense_layers": "an export prunes every layer alike (a checkpoint holds one size for all layers)",
    "prefill": "it schedules generation with the engine; an export is one static checkpoint",
    "dense_tokens": "it schedules generation with the engine; an export is one static checkpoint",
    "backend": "it picks the engine's matmuls; an export is a plain transformers checkpoint",
}


def check_export(method: Method, out_dir: str | Path, options: PruneOptions = PruneOptions(),
                 given: Collection[str] = ()) -> None:
    """The checks that need no model: run them before loading one. `given`: the option keys the user set."""
    if not method.prunes:
        raise AappError(f"{method.name} prunes nothing, so there is nothing to export; export a static method "
                       "(wanda-sp, flap)")
    export_compatible(method)
    for key in given:
        if key in NOT_EXPORTED:
            raise AappError(f"option {key} does not apply to export: {NOT_EXPORTED[key]}")
    if options.prefill != "probe":  # dense_tokens needs prefill=dense, so this covers it too
        raise AappError(f"option prefill does not apply to export: {NOT_EXPORTED['prefill']}")
    check_export_dir(out_dir)


# -- the checkpoint -----------------------------------------------------------------------------
def _pruned_state_dict(loaded: LoadedModel, sels: list[Selection], target: ExportTarget) -> dict[str, torch.Tensor]:
    """The source state dict with every layer's projections sliced to its mask (and biases set)."""
    model, g = loaded.model, loaded.geometry
    sd = dict(model.state_dict())
    names = {id(m): name for name, m in model.named_modules()}
    for i, sel in enumerate(sels):
        p = loaded.adapter.layer_parts(model, i)
        dev = p.q_proj.weight.device
        m = sel.mask
        q, kv, ch = (t.to(dev) for t in (m.q_rows(g.head_dim), m.kv_rows(g.head_dim), m.channels))
        sliced = {
            p.q_proj: _rows(p.q_proj, q, target.attention_bias),
            p.k_proj: _rows(p.k_proj, kv, target.attention_bias),
            p.v_proj: _rows(p.v_proj, kv, target.attention_bias),
            p.o_proj: _cols(p.o_proj, q, sel.attn_bias, target.attention_bias),
            p.gate_proj: _rows(p.gate_proj, ch, target.mlp_bias),
            p.up_proj: _rows(p.up_proj, ch, target.mlp_bias),
            p.down_proj: _cols(p.down_proj, ch, sel.mlp_bias, target.mlp_bias),
        }
        for lin, (w, b) in sliced.items():
            sd[f"{names[id(lin)]}.weight"] = w.contiguous()
            if b is not None:
                sd[f"{names[id(lin)]}.bias"] = b.contiguous()
    return sd


def _rows(lin, idx: torch.Tensor, want_bias: bool):
    """Output rows `idx` of `lin`, with a zero bias where the target has one and `lin` had none."""
    w = lin.weight.index_select(0, idx)
    if lin.bias is not None:
        return w, lin.bias.index_select(0, idx)
    return w, torch.zeros(len(idx), dtype=w.dtype, device=w.device) if want_bias else None


def _cols(lin, idx: torch.Tensor, extra: torch.Tensor | None, want_bias: bool):
    """Input columns `idx` of `lin`; a compensation `extra` is added to its bias."""
    w = lin.weight.index_select(1, idx)
    b = lin.bias
    if extra is not None:
        b = (extra.float().to(w.device) + (0.0 if b is None else b.float())).to(w.dtype)
    elif b is None and want_bias:
        b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    return w, b


def _uniform(sels: list[Selection]) -> tuple[int, int, int]:
    counts = {(len(s.mask.heads), len(s.mask.kv_heads), len(s.mask.channels)) for s in sels}
    if len(counts) != 1:  # the export plan makes this impossible; guard against a future plan change
        raise AappError(f"export needs the same kept counts in every layer, got {sorted(counts)}")
    return counts.pop()


def export_static(loaded: LoadedModel, method: Method, options: PruneOptions, calib: Calibration | None,
                  out_dir: str | Path) -> ExportReport:
    """Write `loaded` pruned by static `method` at `options.ratio` to `out_dir` as an HF checkpoint.

    Uses the export-compatible plan (`export_selection`), every layer pruned alike (`options.dense_layers`
    does not apply: `check_export` refuses it when given).
    The model in `loaded` is not changed and must not be wrapped by the engine.
    """
    check_ratio(options.ratio)
    out = Path(out_dir)
    check_export(method, out, options)
    if any(isinstance(m, (PrunedAttention, PrunedMLP)) for m in loaded.model.modules()):
        raise AappError("the model is wrapped by the pruning engine; remove its handle before exporting")
    g = loaded.geometry
    sels = layer_selections(loaded, method, options, calib)
    heads, kv_heads, channels = _uniform(sels)
    target = loaded.adapter.export_target(loaded.model, method.name, any(s.attn_bias is not None for s in sels),
                                          any(s.mlp_bias is not None for s in sels))
    text_cfg = target.config.get_text_config()  # Gemma-3 multimodal nests it
    text_cfg.num_attention_heads = heads
    text_cfg.num_key_value_heads = kv_heads
    text_cfg.head_dim = g.head_dim  # LLaMA/Qwen2 would otherwise derive it from hidden_size / heads
    text_cfg.intermediate_size = channels

    sd = _pruned_state_dict(loaded, sels, target)
    with torch.device("meta"):
        pruned = target.model_cls._from_config(target.config, dtype=loaded.dtype)
    pruned.load_state_dict(sd, strict=True, assign=True)
    pruned.tie_weights()
    if getattr(loaded.model, "generation_config", None) is not None:
        pruned.generation_config = copy.deepcopy(loaded.model.generation_config)

    per_group = heads // kv_heads
    planned = export_plan(g, options).budgets[0].heads
    notes = (
        f"export-compatible plan: all {g.num_layers} layers pruned alike; "
        f"each of {kv_heads} kv heads keeps {per_group} of {g.group_size} query heads; "
        f"{channels} of {g.intermediate_size} MLP channels per layer",
        "the engine runs the same masks with export_compatible(method) and export_options(options)",
    ) + target.notes
    if heads != planned:
        notes += (f"{heads} query heads per layer instead of the plan's {planned}: the nearest count with whole "
                  f"heads per kv group that divides hidden_size {g.hidden_size}",)
    if any(s.attn_bias is not None or s.mlp_bias is not None for s in sels):
        notes += ("bias compensation saved as o_proj/down_proj biases",)
    report = ExportReport(
        out_dir=str(out), method=method.name, ratio=options.ratio, source=loaded.name,
        source_fingerprint=loaded.fingerprint, model_type=target.config.model_type, num_layers=g.num_layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, heads_per_group=per_group, head_dim=g.head_dim,
        intermediate_size=channels, attention_bias=target.attention_bias, mlp_bias=target.mlp_bias,
        params_before=_count(loaded.model), params_after=_count(pruned), notes=notes,
    )

    with atomic_dir(out, check=check_export_dir) as tmp:
        pruned.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())
