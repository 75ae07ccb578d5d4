"""Architecture adapters: the one place that knows each family's module names and quirks.

Pruning needs, per decoder layer, the attention projections (q/k/v rows per head,
o_proj input columns per head, GQA groups), the gated MLP (gate/up rows and down_proj
input columns per intermediate channel), and the norms around each half of the block.
Everything else in aapp asks an adapter for these instead of reaching into HF modules.
An adapter also knows how a pruned copy of its family can be saved (`export_target`), and
Geometry names the MLP activation as the one table in `aapp_kernels.activations` does.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

from torch import nn

from aapp.errors import AappError, ModelError
from aapp_kernels import activations


@dataclass(frozen=True)
class LayerParts:
    """The modules of one decoder layer, by role.

    A block computes, for residual x:
        a = attn(input_norm(x));  x = x + post_attn_norm(a)
        m = mlp(pre_mlp_norm(x)); x = x + post_mlp_norm(m)
    where the post norms are the identity for families without them (LLaMA, Qwen2).
    """

    layer: nn.Module
    attn: nn.Module
    mlp: nn.Module
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear
    gate_proj: nn.Linear
    up_proj: nn.Linear
    down_proj: nn.Linear
    input_norm: nn.Module
    pre_mlp_norm: nn.Module
    post_attn_norm: nn.Module | None = None
    post_mlp_norm: nn.Module | None = None
    q_norm: nn.Module | None = None  # per-head RMSNorm on queries (Gemma-3)
    k_norm: nn.Module | None = None


@dataclass(frozen=True)
class Geometry:
    """Shapes shared by every decoder layer of a model."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    activation: str  # a name in aapp_kernels.activations.ACTIVATIONS ("silu", "gelu_tanh")
    attn_scaling: float
    sliding_window: tuple[int | None, ...]  # per layer; None = global attention
    context_length: int | None = None  # positions the model was trained for (max_position_embeddings)

    @property
    def group_size(self) -> int:
        """Query heads that share one key/value head (1 without GQA)."""
        return self.num_heads // self.num_kv_heads

    def kv_head_of(self, q_head: int) -> int:
        return q_head // self.group_size


@dataclass(frozen=True)
class ExportTarget:
    """How a family saves a pruned copy of itself: the config, the class, the biases every layer carries.

    A pruned export may need biases the source lacks: FLAP's compensation is a constant added to
    o_proj's and down_proj's outputs, which can only be saved as their biases.
    """

    config: object  # a copy of the source's config (or another family's); export sets the kept counts
    model_cls: type
    attention_bias: bool  # the config gives q/k/v/o biases (zeros where the source had none)
    mlp_bias: bool        # the config gives gate/up/down biases
    notes: tuple[str, ...] = ()


# Hugging Face's config names (hidden_act / hidden_activation) for the activations aapp_kernels has.
HF_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_tanh": "gelu_tanh",
}


class ArchAdapter:
    """LLaMA layout; the other families override what differs.

    Qwen2 differs from LLaMA only by biases on q/k/v, which LayerParts already exposes
    through `q_proj.bias`, so it overrides only what those hard-coded biases change: how a
    pruned copy is saved (`export_target`).
    """

    family = "llama"
    model_types: tuple[str, ...] = ("llama",)
    unit_norm_weight = 1.0  # the RMSNorm weight that scales by one: y = x_hat * w

    def text_config(self, model: nn.Module):
        return model.config

    def decoder(self, model: nn.Module) -> nn.Module:
        """The module that holds embed_tokens, layers, norm and rotary_emb."""
        return model.model

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.decoder(model).layers

    def layer_parts(self, model: nn.Module, index: int) -> LayerParts:
        layer = self.layers(model)[index]
        attn, mlp = layer.self_attn, layer.mlp
        return LayerParts(
            layer=layer, attn=attn, mlp=mlp,
            q_proj=attn.q_proj, k_proj=attn.k_proj, v_proj=attn.v_proj, o_proj=attn.o_proj,
            gate_proj=mlp.gate_proj, up_proj=mlp.up_proj, down_proj=mlp.down_proj,
            input_norm=layer.input_layernorm, **self.norms(layer),
        )

    def norms(self, layer: nn.Module) -> dict:
        """The family's norms around the two halves of a block (see LayerParts)."""
        return {"pre_mlp_norm": layer.post_attention_layernorm}

    def embed_tokens(self, model: nn.Module) -> nn.Module:
        return self.decoder(model).embed_tokens

    def lm_head(self, model: nn.Module) -> nn.Linear:
        return model.lm_head

    def activation_name(self, cfg) -> str:
        return getattr(cfg, "hidden_act", "silu")

    def attn_scaling(self, cfg, head_dim: int) -> float:
        return head_dim**-0.5

    def geometry(self, model: nn.Module) -> Geometry:
        cfg = self.text_config(model)
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        act_name = self.activation_name(cfg)
        if act_name not in HF_ACTIVATIONS:
            raise ModelError(f"unsupported MLP activation {act_name!r} in {cfg.model_type}")
        if getattr(cfg, "attn_logit_softcapping", None) is not None:
            # The pruned attention runs SDPA, which has no logit soft-capping (Gemma-2 had it; Gemma-3 does not).
            raise ModelError(f"{cfg.model_type}: attention logit soft-capping is not supported")
        layer_types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
        window = getattr(cfg, "sliding_window", None)
        return Geometry(
            model_type=cfg.model_type,
            num_layers=cfg.num_hidden_layers,
            hidden_size=cfg.hidden_size,
            num_heads=heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate_size=cfg.intermediate_size,
            vocab_size=cfg.vocab_size,
            activation=HF_ACTIVATIONS[act_name],
            attn_scaling=self.attn_scaling(cfg, head_dim),
            sliding_window=tuple(window if t == "sliding_attention" else None for t in layer_types),
            context_length=getattr(cfg, "max_position_embeddings", None),
        )

    def export_target(self, model: nn.Module, method: str, need_o_bias: bool, need_down_bias: bool) -> ExportTarget:
        """The config and class that can hold `model` pruned, with o_proj / down_proj biases where
        needed, or an AappError naming `method` when the family cannot hold them.

        LLaMA can hold both: `attention_bias` (which also gives q/k/v a bias, written as zeros where
        there was none) and `mlp_bias` (zeros on gate/up).
        """
        cfg = copy.deepcopy(model.config)
        attn_bias = bool(cfg.attention_bias) or need_o_bias
        mlp_bias = bool(getattr(cfg, "mlp_bias", False)) or need_down_bias
        cfg.attention_bias, cfg.mlp_bias = attn_bias, mlp_bias
        return ExportTarget(cfg, type(model), attn_bias, mlp_bias)


class Qwen2Adapter(ArchAdapter):
    family = "qwen2"
    model_types = ("qwen2",)

    def export_target(self, model, method, need_o_bias, need_down_bias):
        """Qwen2 hard-codes q/k/v biases and has no o_proj/down_proj bias. Without sliding-window
        layers it is exactly LLaMA with `attention_bias`, so an export that needs those biases is
        saved as LLaMA (the notes say so); with them, it is refused."""
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = copy.deepcopy(model.config)
        if not (need_o_bias or need_down_bias):
            return ExportTarget(cfg, type(model), False, False)  # its own q/k/v biases stay
        if any(t != "full_attention" for t in (cfg.layer_types or [])):
            raise AappError(f"{method} export needs o_proj/down_proj biases, which Qwen2 lacks, and this model's "
                            "sliding-window layers rule out saving it as LLaMA; export wanda-sp instead")
        fields = {f.name for f in dataclasses.fields(LlamaConfig)} - {"architectures", "transformers_version"}
        values = {k: v for k, v in cfg.to_dict().items() if k in fields}
        llama = LlamaConfig(**{**values, "attention_bias": True, "mlp_bias": need_down_bias})
        note = ("saved as LLaMA (model_type llama): Qwen2 has no o_proj/down_proj bias for the compensation, "
                "and Qwen2 without sliding windows is LLaMA with attention_bias (o_proj bias = compensation)")
        return ExportTarget(llama, LlamaForCausalLM, True, need_down_bias, (note,))


class Gemma3Adapter(ArchAdapter):
    """Gemma-3: q/k norms, sandwich norms around both halves, GeGLU, query_pre_attn_scalar.

    The multimodal checkpoints (Gemma-3-12B-IT) nest the text decoder under
    `model.language_model` and keep the text settings in `config.text_config`.
    """

    family = "gemma3"
    model_types = ("gemma3", "gemma3_text")
    unit_norm_weight = 0.0  # Gemma's RMSNorm scales by (1 + w)

    def text_config(self, model):
        cfg = model.config
        return getattr(cfg, "text_config", None) or cfg

    def decoder(self, model):
        inner = model.model
        return getattr(inner, "language_model", inner)

    def norms(self, layer):
        return {
            "pre_mlp_norm": layer.pre_feedforward_layernorm,
            "post_attn_norm": layer.post_attention_layernorm,  # Gemma names its sandwich norms this way
            "post_mlp_norm": layer.post_feedforward_layernorm,
            "q_norm": layer.self_attn.q_norm,
            "k_norm": layer.self_attn.k_norm,
        }

    def activation_name(self, cfg):
        return getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", "gelu_pytorch_tanh")

    def attn_scaling(self, cfg, head_dim):
        return cfg.query_pre_attn_scalar**-0.5

    def export_target(self, model, method, need_o_bias, need_down_bias):
        """Gemma-3 has `attention_bias` but no MLP bias, and its post-MLP norm keeps a down_proj
        constant from moving anywhere else, so an export that needs one is refused."""
        if need_down_bias:
            raise AappError(f"Gemma-3's MLP has no bias in transformers, so {method}'s down_proj compensation "
                            "cannot be saved (the post-MLP norm keeps it from moving elsewhere); "
                            "export wanda-sp instead")
        cfg = copy.deepcopy(model.config)
        text_cfg = cfg.get_text_config()  # the multimodal release nests it
        attn_bias = bool(getattr(text_cfg, "attention_bias", False)) or need_o_bias
        text_cfg.attention_bias = attn_bias
        return ExportTarget(cfg, type(model), attn_bias, False)


ADAPTERS: dict[str, ArchAdapter] = {
    t: a for a in (ArchAdapter(), Qwen2Adapter(), Gemma3Adapter()) for t in a.model_types
}


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for_config(config) -> ArchAdapter:
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ModelError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(supported_model_types())}"
        )
    return ADAPTERS[model_type]


def adapter_for(model: nn.Module) -> ArchAdapter:
    return adapter_for_config(model.config)


def activation_fn(name: str):
    """The MLP gate activation by its Geometry name, from the one table the kernels use too."""
    if name not in activations.ACTIVATIONS:
        raise ModelError(f"unknown activation {name!r}")
    return activations.ACTIVATIONS[name].fn
