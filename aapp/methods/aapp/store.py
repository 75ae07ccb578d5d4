"""AAPP's section of the calibration file ("align"): its typed data, and the only place that
knows its tensor and metadata names.

`Alignment` holds the two sites' statistics and the block-input residual over harmful and over
harmless prompts, at the chat template's post-instruction tokens; per risk gate its AUROC and
threshold per layer; and, optionally, the thresholds refitted on the features Probe Pruning's
prefill gives at a few ratios (aapp.methods.aapp.thresholds). Tensor names inside the section
(the file prefixes them with "align."):

  {attn,mlp}.{harmful,harmless}.{mean,sq_mean}       [L, C]
  resid.{harmful,harmless}.{mean,energy}             [L, D]  energy = mean square
  gate.{GATE}.{auroc,threshold}                      [L]
  gate.{GATE}.{route_threshold,route_fpr,pair_auroc} [L]  the routing cut and what it escalates
                                                             (aapp.methods.aapp.gates); optional
  gate.{GATE}.{weight,bias}                          [L, D], [L]  fitted gates only
  gate.{GATE}.pruned_threshold                       [R, L]  optional, with the metadata key
                                                             "gate_pruned": {"ratios": [R floats],
                                                             "dense_layers": n, "max_fpr": f or null}

The section's metadata also names the prompt sets and counts (`harmful`, `harmless`,
`harmful_count`, `harmless_count`), how the prompts were chosen from them (`selection`: limit, sample
and seed; files before it lack it), `post_instruction_tokens` and `gate_prose_windows`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from aapp.calibration.store import Calibration, Section, SiteStats, check_shape
from aapp.errors import CalibrationError

SECTION = "align"
PROMPT_SETS = ("harmful", "harmless")
SITES = ("attn", "mlp")
PRUNED_META = "gate_pruned"
RATIO_MATCH = 1e-6  # a plan's ratio matches a stored one within this
META = ("harmful", "harmless", "harmful_count", "harmless_count", "post_instruction_tokens", "gate_prose_windows",
        "contrast", "contrast_pairs", "selection")
ROUTE_FIELDS = ("route_threshold", "route_fpr", "pair_auroc")


@dataclass(frozen=True)
class PromptSetStats:
    """One prompt set's statistics at its post-instruction tokens."""

    attn: SiteStats
    mlp: SiteStats
    resid: SiteStats  # the block input of every layer: mean and energy (mean square), [L, D]

    def site(self, name: str) -> SiteStats:
        return {"attn": self.attn, "mlp": self.mlp}[name]


@dataclass(frozen=True)
class GateFit:
    """A risk gate calibrated at every layer, each [L]: the AUROC its layer is chosen by
    (in-sample for gates with nothing fitted, cross-validated for fitted ones) and the score
    threshold; a fitted linear gate also has its weights [L, D] and biases [L]. For routing: the
    cut that keeps ROUTE_RECALL of the harmful calibration prompts, the share of benign ones it
    escalates, and the AUROC on contrastive mirrored pairs (files calibrated before routing lack them)."""

    auroc: torch.Tensor
    threshold: torch.Tensor
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    route_threshold: torch.Tensor | None = None
    route_fpr: torch.Tensor | None = None
    pair_auroc: torch.Tensor | None = None

    def at(self, layer: int) -> "GateFit":
        """This fit at one layer, as a one-layer fit."""
        one = slice(layer, layer + 1)
        return GateFit(*(None if t is None else t[one] for t in (self.auroc, self.threshold, self.weight, self.bias,
                                                                  self.route_threshold, self.route_fpr, self.pair_auroc)))


@dataclass(frozen=True)
class PrunedThresholds:
    """Gate thresholds fitted on the features of Probe Pruning's prefill, per ratio: `threshold`
    maps a gate to [R, L] for `ratios` [R], all at the plan of `dense_layers` dense layers, each
    cut so that at most `max_fpr` of the benign calibration inputs pass it (None: no cap)."""

    ratios: tuple[float, ...]
    dense_layers: int
    threshold: dict[str, torch.Tensor]
    max_fpr: float | None = None

    def find(self, gate: str, ratio: float) -> torch.Tensor | None:
        """The gate's thresholds [L] at `ratio` (within RATIO_MATCH), or None."""
        if gate not in self.threshold:
            return None
        for r, ratio_r in enumerate(self.ratios):
            if abs(ratio_r - ratio) <= RATIO_MATCH:
                return self.threshold[gate][r]
        return None

    def merged(self, new: "PrunedThresholds") -> "PrunedThresholds":
        """These thresholds with `new`'s added (a ratio both hold takes `new`'s); at another
        `dense_layers`, or for other gates, `new` replaces them."""
        if ((new.dense_layers, new.max_fpr) != (self.dense_layers, self.max_fpr)
                or set(new.threshold) != set(self.threshold)):
            return new
        keep = [r for r, ratio in enumerate(self.ratios)
                if all(abs(ratio - n) > RATIO_MATCH for n in new.ratios)]
        order = sorted([(self.ratios[r], 0, r) for r in keep] + [(n, 1, r) for r, n in enumerate(new.ratios)])
        pick = {0: self.threshold, 1: new.threshold}
        return PrunedThresholds(ratios=tuple(ratio for ratio, _, _ in order), dense_layers=new.dense_layers,
                                max_fpr=new.max_fpr,
                                threshold={g: torch.stack([pick[src][g][r] for _, src, r in order])
                                           for g in new.threshold})


@dataclass(frozen=True)
class Alignment:
    harmful: PromptSetStats
    harmless: PromptSetStats
    gates: dict[str, GateFit] = field(default_factory=dict)
    pruned: PrunedThresholds | None = None
    meta: dict = field(default_factory=dict)  # the prompt sets, their counts, post_instruction_tokens, ...

    @property
    def post_instruction_tokens(self) -> int:
        return int(self.meta.get("post_instruction_tokens", 1))


def has_alignment(calib: Calibration) -> bool:
    return SECTION in calib.sections


def alignment(calib: Calibration) -> Alignment:
    """AAPP's statistics in `calib`, or a CalibrationError saying how to get them."""
    section = calib.sections.get(SECTION)
    if section is None:
        raise CalibrationError("the calibration file has no alignment statistics; run `aapp calibrate` "
                               "with harmful and harmless prompts (its defaults have them)")
    try:
        return _decode(section)
    except KeyError as e:
        raise CalibrationError(f"the calibration file's alignment section lacks {SECTION}.{e.args[0]}; "
                               "run `aapp calibrate` again") from None


def check_shapes(calib: Calibration, g, model: str) -> None:
    """Every tensor of the section has the shape a model of geometry `g` needs (see the table above)."""
    width = {"attn": g.num_heads * g.head_dim, "mlp": g.intermediate_size, "resid": g.hidden_size}
    for name, t in calib.sections.get(SECTION, Section({}, {})).tensors.items():
        parts = name.split(".")
        if parts[0] in width:
            shape = (g.num_layers, width[parts[0]])
        elif parts[-1] == "weight":
            shape = (g.num_layers, g.hidden_size)
        elif parts[-1] == "pruned_threshold":
            shape = (t.shape[0], g.num_layers)  # the ratio count is checked on decoding
        else:  # auroc, threshold, bias
            shape = (g.num_layers,)
        check_shape(f"{SECTION}.{name}", t, shape, model)


def set_alignment(calib: Calibration, a: Alignment) -> None:
    """Store `a` as `calib`'s alignment section (in place)."""
    calib.sections[SECTION] = _encode(a)


# -- the section's layout ----------------------------------------------------------------------
def _site(t: dict[str, torch.Tensor], prefix: str, sq_name: str = "sq_mean") -> SiteStats:
    return SiteStats(mean=t[f"{prefix}.mean"], sq_mean=t[f"{prefix}.{sq_name}"])


def _encode(a: Alignment) -> Section:
    t: dict[str, torch.Tensor] = {}
    for name in PROMPT_SETS:
        stats: PromptSetStats = getattr(a, name)
        for site in SITES:
            s = stats.site(site)
            t[f"{site}.{name}.mean"], t[f"{site}.{name}.sq_mean"] = s.mean, s.sq_mean
        t[f"resid.{name}.mean"], t[f"resid.{name}.energy"] = stats.resid.mean, stats.resid.sq_mean
    for gate, fit in a.gates.items():
        t[f"gate.{gate}.auroc"], t[f"gate.{gate}.threshold"] = fit.auroc, fit.threshold
        for name in ("weight", "bias", *ROUTE_FIELDS):
            if getattr(fit, name) is not None:
                t[f"gate.{gate}.{name}"] = getattr(fit, name)
    meta = dict(a.meta)
    if a.pruned is not None:
        for gate, threshold in a.pruned.threshold.items():
            t[f"gate.{gate}.pruned_threshold"] = threshold
        meta[PRUNED_META] = {"ratios": list(a.pruned.ratios), "dense_layers": a.pruned.dense_layers,
                             "max_fpr": a.pruned.max_fpr}
    return Section(t, meta)


def _decode(section: Section) -> Alignment:
    t, meta = section.tensors, dict(section.meta)
    sets = {name: PromptSetStats(attn=_site(t, f"attn.{name}"), mlp=_site(t, f"mlp.{name}"),
                                 resid=_site(t, f"resid.{name}", sq_name="energy")) for name in PROMPT_SETS}
    gates = sorted({k.split(".")[1] for k in t if k.startswith("gate.")})
    fits = {g: GateFit(auroc=t[f"gate.{g}.auroc"], threshold=t[f"gate.{g}.threshold"],
                       weight=t.get(f"gate.{g}.weight"), bias=t.get(f"gate.{g}.bias"),
                       **{name: t.get(f"gate.{g}.{name}") for name in ROUTE_FIELDS}) for g in gates}
    pruned = _pruned(meta.get(PRUNED_META), t)
    return Alignment(**sets, gates=fits, pruned=pruned, meta={k: meta[k] for k in META if k in meta})


def _pruned(spec: dict | None, t: dict[str, torch.Tensor]) -> PrunedThresholds | None:
    threshold = {k.split(".")[1]: v for k, v in t.items() if k.startswith("gate.") and k.endswith(".pruned_threshold")}
    if spec is None:
        if threshold:
            raise KeyError(f"{PRUNED_META} (metadata of the pruned thresholds)")
        return None
    ratios = tuple(float(r) for r in spec["ratios"])
    for gate, v in threshold.items():
        if v.shape[0] != len(ratios):
            raise KeyError(f"gate.{gate}.pruned_threshold for {len(ratios)} ratios (it has {v.shape[0]})")
    max_fpr = spec.get("max_fpr")
    return PrunedThresholds(ratios=ratios, dense_layers=int(spec["dense_layers"]), threshold=threshold,
                            max_fpr=None if max_fpr is None else float(max_fpr))


def set_random_alignment(calib: Calibration, g, seed: int = 0) -> None:
    """Give `calib` an alignment section of plausible random statistics for a model of geometry `g`
    (direction and kl gates, never firing on purpose): for benchmarks, whose speed does not depend on
    the values, so that they need not know the section's layout."""
    gen = torch.Generator().manual_seed(seed)
    L, A, M, D = g.num_layers, g.num_heads * g.head_dim, g.intermediate_size, g.hidden_size

    def stats(c: int, scale: float = 0.1) -> SiteStats:
        return SiteStats(mean=torch.randn(L, c, generator=gen) * scale, sq_mean=torch.rand(L, c, generator=gen) + 0.1)

    def prompt_set() -> PromptSetStats:
        return PromptSetStats(attn=stats(A), mlp=stats(M), resid=stats(D, scale=1.0))

    gates = {gate: GateFit(auroc=torch.full((L,), 0.5), threshold=torch.zeros(L)) for gate in ("direction", "kl")}
    set_alignment(calib, Alignment(prompt_set(), prompt_set(), gates, meta={"post_instruction_tokens": 5}))
