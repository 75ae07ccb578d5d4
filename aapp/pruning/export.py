"""`aapp prune --export DIR`: a static method's pruning written as a smaller HF checkpoint.

The engine prunes by masks; the export slices the weights instead, so DIR holds a plain
transformers model (safetensors, config, tokenizer) that loads with no aapp code and is
physically smaller and faster everywhere.

Why export uses its own plan. LlamaConfig, Qwen2Config and Gemma3TextConfig hold ONE
`intermediate_size`, ONE `num_attention_heads` and ONE `num_key_value_heads` for all
layers, and HF attention gives every kv head the same number of consecutive query heads.
The engine's default plan keeps the first layers dense and keeps heads one by one (a kv
head goes only when all its query heads do), which these configs cannot express. So the
export runs an export-compatible plan, and the engine can run the very same masks:
  * every layer is pruned alike: the plan of `options.ratio` with `dense_layers=0`, whose
    MLP channel count (rounded to `channel_multiple`) is the same in every layer;
  * attention is pruned per GQA group: each kv group keeps the same number of query
    heads (at least 1), picked inside the group by the method's head scores, and every
    kv head stays. Without GQA (group size 1) each head is its own group, so heads (and
    their kv heads) go one by one. The kept count is the one nearest the plan's that also
    divides hidden_size, which LlamaConfig and Gemma3TextConfig demand (`export_heads`).
`export_compatible(method)` is the method with that selection and `export_options(options)`
the engine options; `prune_model(loaded, export_compatible(m), export_options(o), calib)`
computes what the exported checkpoint computes.

Biases. FLAP's compensation is a constant added to o_proj's and down_proj's outputs; it
becomes their bias. LLaMA can hold both (`attention_bias`, which also gives q/k/v a bias,
written as zeros where there was none; `mlp_bias`, zeros on gate/up). Qwen2 hard-codes
q/k/v biases and no o_proj/down_proj bias; since Qwen2 without sliding-window layers is
exactly LLaMA with `attention_bias`, such a checkpoint is saved as LLaMA (the report says
so). Gemma-3 has `attention_bias` but no MLP bias, and its post-MLP norm stops the
constant from moving anywhere else, so FLAP export of Gemma-3 is refused.

Output. DIR is built in a temporary directory beside it and renamed into place at the
end, so a failed export leaves nothing half-written. An existing DIR must be empty or a
previous aapp export (it holds `aapp_export.json`, the report); the latter is replaced.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from aapp.calibration.store import Calibration
from aapp.errors import AappError, CalibrationError, InputError
from aapp.io import atomic_dir, check_dir_writable
from aapp.methods.base import Method, Selection
from aapp.methods.static import Flap, WandaSP, _Static
from aapp.models.adapters import Geometry
from aapp.models.loading import LoadedModel
from aapp.pruning.engine import PruneOptions
from aapp.pruning.forward import PrunedAttention, PrunedMLP
from aapp.pruning.masks import LayerMask, top_k
from aapp.pruning.plan import LayerBudget, PrunePlan, check_ratio, make_plan

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


# -- export-compatible selection ------------------------------------------------------------
def group_uniform_mask(head_scores: torch.Tensor, channel_scores: torch.Tensor, budget: LayerBudget,
                       g: Geometry) -> LayerMask:
    """Keep `export_heads` query heads spread evenly over the kv groups (all kv heads stay),
    the best of each group by score, and the budget's top channels. Without GQA, the top heads."""
    channels = top_k(channel_scores, budget.channels)
    n = export_heads(budget, g)
    G = g.group_size
    if G == 1:
        return LayerMask.from_kept(top_k(head_scores, n), channels, g)
    # Stable descending sort: ties go to the lower head, as in top_k.
    order = torch.sort(head_scores.float().view(g.num_kv_heads, G), dim=1, descending=True, stable=True).indices
    offsets = torch.arange(g.num_kv_heads, device=order.device)[:, None] * G
    heads = (order[:, : n // g.num_kv_heads] + offsets).reshape(-1)
    return LayerMask.from_kept(heads, channels, g)


def export_heads(budget: LayerBudget, g: Geometry) -> int:
    """Query heads an exported layer keeps: the count nearest the budget's (ties: more) that
    HF can hold, i.e. a whole number (at least 1) per kv group under GQA, any number without,
    and a divisor of hidden_size.

    LlamaConfig and Gemma3TextConfig reject heads that do not divide hidden_size (their
    validate_architecture runs at save and at load, even with head_dim set); Qwen2Config does
    not, but a Qwen2 export may be saved as LLaMA, so one rule holds for every family.
    """
    if g.group_size == 1:
        counts = range(1, g.num_heads + 1)
    else:
        counts = range(g.num_kv_heads, g.num_heads + 1, g.num_kv_heads)
    valid = [c for c in counts if g.hidden_size % c == 0] or list(counts)
    return min(valid, key=lambda c: (abs(c - budget.heads), -c))


class _GroupUniform:
    """Mixin over a static method: the same scores and compensation, an exportable choice."""

    def choose(self, head_scores, channel_scores, budget):
        return group_uniform_mask(head_scores, channel_scores, budget, self.geometry)


class WandaSPExport(_GroupUniform, WandaSP):
    pass


class FlapExport(_GroupUniform, Flap):
    pass


_EXPORTABLE: dict[type, type] = {WandaSP: WandaSPExport, Flap: FlapExport}


def export_compatible(method: Method) -> Method:
    """A fresh instance of `method` that selects export-compatible masks (static methods only)."""
    if isinstance(method, tuple(_EXPORTABLE.values())):
        return type(method)()
    cls = _EXPORTABLE.get(type(method))
    if cls is None:
        static = ", ".join(sorted(m.name for m in _EXPORTABLE))
        if isinstance(method, _Static):
            raise AappError(f"--export does not support method {method.name!r} yet; supported: {static}")
        raise AappError(f"--export is for static methods only ({static}): {method.name!r} picks heads and "
                        "channels per batch, so no single smaller checkpoint computes it")
    return cls()


def export_options(options: PruneOptions) -> PruneOptions:
    """Engine options that run the export's plan (every layer pruned alike)."""
    return dataclasses.replace(options, dense_layers=0)


def export_plan(g: Geometry, options: PruneOptions) -> PrunePlan:
    return make_plan(g, options.ratio, dense_layers=0, channel_multiple=options.channel_multiple)


def layer_selections(loaded: LoadedModel, method: Method, options: PruneOptions,
                     calib: Calibration | None) -> list[Selection]:
    """Every layer's export-compatible selection, exactly as the engine would run it."""
    compat = export_compatible(method)
    if compat.needs_calibration and calib is None:
        raise CalibrationError(f"method {method.name!r} needs a calibration file (--calib); run `aapp calibrate`")
    if calib is not None:
        calib.check_model(loaded.fingerprint, loaded.name)
    g = loaded.geometry
    compat.bind(loaded.model, loaded.adapter, g, export_plan(g, options), calib)
    return [compat.selection(i) for i in range(g.num_layers)]


# -- output directory -------------------------------------------------------------------------
def check_export_dir(out_dir: str | Path) -> None:
    """Fail before a long run when DIR cannot become an export (see the module docstring)."""
    p = check_dir_writable(out_dir, "--export", replace=True)
    if p.is_dir() and any(p.iterdir()) and not (p / MARKER).is_file():
        raise InputError(f"--export {p} is a non-empty directory and not an earlier aapp export "
                         f"(no {MARKER}); choose a new or empty directory")


def check_export(method: Method, out_dir: str | Path) -> None:
    """The checks that need no model: run them before loading one."""
    export_compatible(method)
    check_export_dir(out_dir)


# -- the checkpoint -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Target:
    """The saved config, and which biases it makes every layer carry."""

    config: object
    model_cls: type
    attention_bias: bool  # the config gives q/k/v/o biases (zeros where the source had none)
    mlp_bias: bool        # the config gives gate/up/down biases
    notes: tuple[str, ...]


def _target(loaded: LoadedModel, method: str, need_o_bias: bool, need_down_bias: bool) -> _Target:
    """The family and bias flags that can hold the pruned weights, or a clear refusal."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = loaded.model
    cfg = copy.deepcopy(model.config)
    family = loaded.adapter.family
    if family == "llama":
        attn_bias = bool(cfg.attention_bias) or need_o_bias
        mlp_bias = bool(getattr(cfg, "mlp_bias", False)) or need_down_bias
        cfg.attention_bias, cfg.mlp_bias = attn_bias, mlp_bias
        return _Target(cfg, type(model), attn_bias, mlp_bias, ())
    if family == "qwen2":
        if not (need_o_bias or need_down_bias):
            return _Target(cfg, type(model), False, False, ())  # its own q/k/v biases stay
        if any(t != "full_attention" for t in (cfg.layer_types or [])):
            raise AappError(f"{method} export needs o_proj/down_proj biases, which Qwen2 lacks, and this model's "
                            "sliding-window layers rule out saving it as LLaMA; export wanda-sp instead")
        fields = {f.name for f in dataclasses.fields(LlamaConfig)} - {"architectures", "transformers_version"}
        values = {k: v for k, v in cfg.to_dict().items() if k in fields}
        llama = LlamaConfig(**{**values, "attention_bias": True, "mlp_bias": need_down_bias})
        note = ("saved as LLaMA (model_type llama): Qwen2 has no o_proj/down_proj bias for the compensation, "
                "and Qwen2 without sliding windows is LLaMA with attention_bias (o_proj bias = compensation)")
        return _Target(llama, LlamaForCausalLM, True, need_down_bias, (note,))
    # Gemma-3: attention_bias exists; an MLP bias does not.
    if need_down_bias:
        raise AappError(f"Gemma-3's MLP has no bias in transformers, so {method}'s down_proj compensation cannot "
                        "be saved (the post-MLP norm keeps it from moving elsewhere); export wanda-sp instead")
    text_cfg = cfg.get_text_config()
    attn_bias = bool(getattr(text_cfg, "attention_bias", False)) or need_o_bias
    text_cfg.attention_bias = attn_bias
    return _Target(cfg, type(model), attn_bias, False, ())


def _pruned_state_dict(loaded: LoadedModel, sels: list[Selection], target: _Target) -> dict[str, torch.Tensor]:
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

    Uses the export-compatible plan (module docstring); `options.dense_layers` is ignored.
    The model in `loaded` is not changed and must not be wrapped by the engine.
    """
    check_ratio(options.ratio)
    out = Path(out_dir)
    check_export(method, out)
    if any(isinstance(m, (PrunedAttention, PrunedMLP)) for m in loaded.model.modules()):
        raise AappError("the model is wrapped by the pruning engine; remove its handle before exporting")
    g = loaded.geometry
    sels = layer_selections(loaded, method, options, calib)
    heads, kv_heads, channels = _uniform(sels)
    target = _target(loaded, method.name, any(s.attn_bias is not None for s in sels),
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
        f"export-compatible plan: all {g.num_layers} layers pruned alike (dense_layers ignored); "
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
