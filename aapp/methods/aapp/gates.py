"""AAPP's risk gates: does this input look closer to harmful than to harmless history?

A residual gate scores each prompt from a layer's block input, averaged over the chat
template's post-instruction tokens, against the harmful and harmless statistics of that
layer; a score above the layer's calibrated threshold fires. Fixed gates always or never fire.

  direction  projection on the difference-of-means refusal direction (Arditi et al. 2024),
             centred between the two means
  kl         the paper's: KL(input || harmless) - KL(input || harmful) of the residual's
             channel-energy distribution
  logistic   a linear probe fitted at calibration on harmful vs harmless prompts (and prose
             windows, when given, on the harmless side) at every layer: harmfulness is
             linearly readable from the residual well before refusal is (Zhao et al. 2025,
             "LLMs Encode Harmfulness and Refusal Separately"), where a difference of means is
             not. Fitted deterministically in float64 with L-BFGS, its L2 strength and its
             reported AUROC from 5-fold cross-validation on the calibration prompts.
  always | never

`fit_gates` calibrates every residual gate at every layer (the AUROC the layer is chosen by,
and the threshold that maximises balanced accuracy); the calibration file stores the result.
For routing (on_fire dense or R) it also cuts each layer at ROUTE_RECALL of the harmful prompts
and records the share of benign prompts that cut escalates, and, given contrastive mirrored pairs
(the same wording, a harmless object), the AUROC on those pairs alone: out of fold for the fitted
gate, whose training data the pairs join (pair i of each side in the same fold).
`refit_thresholds` refits only the thresholds, with the same rule, on the features a pruned
prefill gives (aapp.methods.aapp.thresholds runs it): pruning the layers before the gate's
keeps the scores' order but shifts their scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from aapp import stats
from aapp.calibration.store import SiteStats
from aapp.methods.aapp.passes import PromptSetPass
from aapp.methods.aapp.store import Alignment, GateFit

FOLDS = 5
ROUTE_RECALL = 0.95  # a routing cut keeps at least this share of harmful calibration prompts above it
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)  # on standardised features, with a class-balanced mean loss


@dataclass(frozen=True)
class Gate:
    name: str
    fires: bool | None = None  # a fixed gate's answer; None for gates that read the residual
    fitted: bool = False       # learns weights at calibration, so its AUROC is cross-validated

    @property
    def reads_residual(self) -> bool:
        return self.fires is None

    def scores(self, features: torch.Tensor, harmful: SiteStats, harmless: SiteStats,
               fit: GateFit | None = None) -> torch.Tensor:
        """Raw scores [N, L] of per-prompt features [N, L, D] against per-layer residual statistics
        ([L, D] each) and, for a fitted gate, its per-layer fit; larger means closer to harmful."""
        raise NotImplementedError(f"the {self.name} gate reads no residual")


class DirectionGate(Gate):
    def scores(self, features, harmful, harmless, fit=None):
        return direction_scores(features, harmful.mean, harmless.mean)


class KLGate(Gate):
    def scores(self, features, harmful, harmless, fit=None):
        return kl_scores(features, harmful.sq_mean, harmless.sq_mean)


class LogisticGate(Gate):
    def scores(self, features, harmful, harmless, fit=None):
        if fit is None or fit.weight is None:
            raise ValueError("the logistic gate needs its fitted weights")
        return (features.float() * fit.weight.float()).sum(-1) + fit.bias.float()


GATES: dict[str, Gate] = {g.name: g for g in (DirectionGate("direction"), KLGate("kl"),
                                               LogisticGate("logistic", fitted=True),
                                               Gate("always", fires=True), Gate("never", fires=False))}


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


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    value = stats.auroc(pos.tolist(), neg.tolist())
    return float("nan") if value is None else value


def best_threshold(pos: torch.Tensor, neg: torch.Tensor, max_fpr: float | None = None) -> float:
    """The cut that maximises balanced accuracy (midpoint between neighbouring scores), among
    those that let at most `max_fpr` of the negatives pass when it is given (the cut above every
    score always qualifies)."""
    scores = torch.cat([pos, neg]).sort().values
    cuts = torch.cat([scores[:1] - 1, (scores[1:] + scores[:-1]) / 2, scores[-1:] + 1])
    tpr = (pos[None, :] > cuts[:, None]).float().mean(1)
    tnr = (neg[None, :] <= cuts[:, None]).float().mean(1)
    score = tpr + tnr
    if max_fpr is not None:
        score = torch.where(1 - tnr <= max_fpr + 1e-9, score, torch.full_like(score, -1.0))
    return float(cuts[torch.argmax(score)])


def logistic_loss(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, l2: float, coef: torch.Tensor,
                  b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`fit_linear`'s objective at (coef [D], b): the sample-weighted BCE of logits z @ coef + b [N]
    against y plus 0.5 * l2 * |coef|^2, and its gradients in coef and b (those autograd gives:
    d BCE / d logit = sigmoid(logit) - y)."""
    s = torch.addmv(b.expand(len(z)), z, coef)  # [N] logits
    bce = torch.nn.functional.binary_cross_entropy_with_logits(s, y, reduction="none")
    residual = w * (torch.sigmoid(s) - y)  # [N] d loss / d logit
    value = (w * bce).sum() + 0.5 * l2 * coef.square().sum()
    return value, torch.addmv(coef, z.T, residual, beta=l2), residual.sum()


def fit_linear(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised logistic regression of labels y [N] on rows x [N, D] with sample weights w [N]
    (summing to 1), on standardised features; returns the weight [D] and bias on the raw features.

    L-BFGS with a strong-Wolfe line search, on one thread, on `logistic_loss` (its gradient written
    out: on a few hundred rows autograd's bookkeeping costs more than the algebra)."""
    x = x.to(torch.float64)
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mu) / sd  # [N, D]
    coef = torch.zeros(x.shape[1], dtype=torch.float64)
    b = torch.zeros((), dtype=torch.float64)
    opt = torch.optim.LBFGS([coef, b], lr=1.0, max_iter=200, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        value, coef.grad, b.grad = logistic_loss(z, y, w, l2, coef, b)
        return value

    with single_thread():
        opt.step(loss)
    weight = coef / sd
    return weight.float(), (b - mu @ weight).float()


@contextmanager
def single_thread() -> Iterator[None]:
    """torch on one thread inside the block. The gate fit's ops are on a few hundred rows: splitting
    each over threads costs more in synchronisation than it saves, and many times more on a busy
    machine, where a thread waits for a core at every op (a 552-row BCE took 230 us on 2 threads, 20
    on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def route_cut(pos: torch.Tensor, neg: torch.Tensor, recall: float = ROUTE_RECALL) -> tuple[float, float]:
    """The highest cut that at least `recall` of the positives score above, and the share of the
    negatives above it (what a router escalates)."""
    p = pos.double().sort().values
    below = len(p) - math.ceil(recall * len(p) - 1e-9)  # positives allowed at or below the cut
    if below <= 0:
        cut = float(p[0]) - 1.0
    else:
        lo, hi = float(p[below - 1]), float(p[below])
        cut = (lo + hi) / 2 if hi > lo else math.nextafter(hi, -math.inf)
    return cut, float((neg.double() > cut).float().mean())


def _folds(n: int, k: int) -> torch.Tensor:
    return torch.arange(n) % k


def fit_logistic(harmful: torch.Tensor, benign: list[torch.Tensor],
                 on_layer: Callable[[int, int], None] | None = None, pairs: int = 0) -> GateFit:
    """The logistic gate at every layer, from harmful features [N1, L, D] against benign sets
    (each [Ni, L, D]; harmless prompts first, then e.g. prose windows). Harmful rows weigh half
    of the loss and the benign sets share the other half equally; the L2 strength per layer is
    the one with the best out-of-fold AUROC, which is the AUROC reported, and the threshold
    maximises out-of-fold balanced accuracy (harmful vs every benign row). `on_layer(done, total)`
    follows the layers (L layers x L2 grid x folds of L-BFGS, each on one thread: see fit_linear).
    The last `pairs` rows of `harmful` and of `benign[0]` are mirrored pairs, row for row: the routing
    cut is taken on the out-of-fold scores of harmful vs `benign[0]`, the pair AUROC on those rows."""
    sets = [harmful] + benign
    x = torch.cat(sets).to(torch.float64)  # [N, L, D]
    y = torch.cat([torch.ones(len(harmful))] + [torch.zeros(len(b)) for b in benign]).to(torch.float64)
    share = [0.5] + [0.5 / len(benign)] * len(benign)
    w = torch.cat([torch.full((len(s),), f / len(s)) for s, f in zip(sets, share)]).to(torch.float64)
    fold = torch.cat([_folds(len(s), FOLDS) for s in sets])  # stratified: every set in every fold
    layers = x.shape[1]
    weights, biases, aucs, thresholds, cuts, fprs, pair_aucs = [], [], [], [], [], [], []
    n_h, n_b = len(harmful), len(benign[0])
    for layer in range(layers):
        with single_thread():
            weights_l, bias_l, auc, threshold, cut, fpr, pair_auc = _fit_layer(x[:, layer], y, w, fold, n_h, n_b, pairs)
        weights.append(weights_l)
        biases.append(bias_l)
        aucs.append(auc)
        thresholds.append(threshold)
        cuts.append(cut)
        fprs.append(fpr)
        if pairs:
            pair_aucs.append(pair_auc)
        if on_layer:
            on_layer(layer + 1, layers)
    return GateFit(auroc=torch.tensor(aucs), threshold=torch.tensor(thresholds), weight=torch.stack(weights),
                   bias=torch.stack(biases), route_threshold=torch.tensor(cuts), route_fpr=torch.tensor(fprs),
                   pair_auroc=torch.tensor(pair_aucs) if pairs else None)


def _fit_layer(xl: torch.Tensor, y: torch.Tensor, w: torch.Tensor, fold: torch.Tensor, n_h: int, n_b: int, pairs: int):
    """fit_logistic at one layer's features xl [N, D]: weight, bias, AUROC, threshold, routing cut,
    its benign share and the pair AUROC (None without pairs)."""
    best = None
    for l2 in L2_GRID:
        oof = torch.empty(len(y), dtype=torch.float64)
        for k in range(FOLDS):
            train, test = fold != k, fold == k
            wk, bk = fit_linear(xl[train], y[train], w[train] / w[train].sum(), l2)
            oof[test] = xl[test] @ wk.double() + bk.double()
        auc = auroc(oof[y == 1].float(), oof[y == 0].float())
        if best is None or auc > best[0]:
            best = (auc, l2, oof)
    auc, l2, oof = best
    wl, bl = fit_linear(xl, y, w, l2)
    cut, fpr = route_cut(oof[:n_h], oof[n_h : n_h + n_b])
    pair_auc = auroc(oof[n_h - pairs : n_h].float(), oof[n_h + n_b - pairs : n_h + n_b].float()) if pairs else None
    return wl, bl, auc, best_threshold(oof[y == 1].float(), oof[y == 0].float()), cut, fpr, pair_auc


def fit_gates(harmful: PromptSetPass, harmless: PromptSetPass, prose: torch.Tensor | None = None,
              on_layer: Callable[[int, int], None] | None = None,
              pairs: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, GateFit]:
    """Every residual gate's AUROC, threshold and routing cut at every layer; `prose` ([N, L, D]
    features of raw text windows) joins the harmless side of the fitted gate, whose fit reports
    `on_layer(done, total)`. `pairs` (harmful, benign features [P, L, D], row i of one mirroring
    row i of the other) join the fitted gate's training data, and every gate's routing cut and
    pair AUROC."""
    fits = {}
    h_pairs, b_pairs = pairs if pairs is not None else (harmful.features[:0], harmless.features[:0])
    for name, gate in GATES.items():
        if not gate.reads_residual:
            continue
        if gate.fitted:
            benign = [torch.cat([harmless.features, b_pairs])] + ([prose] if prose is not None and len(prose) else [])
            fits[name] = fit_logistic(torch.cat([harmful.features, h_pairs]), benign, on_layer, pairs=len(h_pairs))
            continue
        sh, ss, ph, pb = (gate.scores(f, harmful.stats.resid, harmless.stats.resid)
                          for f in (harmful.features, harmless.features, h_pairs, b_pairs))
        layers = range(sh.shape[1])
        routes = [route_cut(torch.cat([sh[:, i], ph[:, i]]), torch.cat([ss[:, i], pb[:, i]])) for i in layers]
        fits[name] = GateFit(auroc=torch.tensor([auroc(sh[:, i], ss[:, i]) for i in layers]),
                             threshold=torch.tensor([best_threshold(sh[:, i], ss[:, i]) for i in layers]),
                             route_threshold=torch.tensor([c for c, _ in routes]),
                             route_fpr=torch.tensor([f for _, f in routes]),
                             pair_auroc=torch.tensor([auroc(ph[:, i], pb[:, i]) for i in layers]) if len(ph) else None)
    return fits


def refit_thresholds(harmful: torch.Tensor, harmless: torch.Tensor, alignment: Alignment,
                     first_pruned: int, prose: torch.Tensor | None = None,
                     max_fpr: float | None = None) -> dict[str, torch.Tensor]:
    """Every residual gate's threshold [L] refitted on per-prompt features [N, L, D] of the
    harmful and harmless prompts that a pruned prefill gave, keeping the gate's statistics and
    weights. Layers up to `first_pruned` (inclusive: its block input comes from dense layers)
    keep the dense threshold. The rule is `best_threshold`'s, as in `fit_gates`; the fitted gate's
    dense threshold is cut on out-of-fold scores and prose windows too, this one on its final
    weights' scores of the calibration prompts, which those weights were fitted on (their dense
    features): a slightly optimistic cut. `prose` ([N, L, D] features of raw text windows under
    the same pruning) joins the benign side of the fitted gate, as in `fit_gates`; `max_fpr`
    caps the share of benign inputs (harmless prompts and prose) that pass the cut."""
    out = {}
    for name, fit in alignment.gates.items():
        gate = GATES[name]
        if not gate.reads_residual:
            continue
        benign = torch.cat([harmless, prose]) if gate.fitted and prose is not None and len(prose) else harmless
        sh, ss = (gate.scores(f, alignment.harmful.resid, alignment.harmless.resid, fit) for f in (harmful, benign))
        out[name] = torch.tensor([float(fit.threshold[i]) if i <= first_pruned
                                  else best_threshold(sh[:, i], ss[:, i], max_fpr) for i in range(sh.shape[1])])
    return out
