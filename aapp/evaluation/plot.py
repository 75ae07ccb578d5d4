"""Refusal rate and over-refusal against pruning ratio, one line per method.

Drawn on a bare `matplotlib.figure.Figure` (Agg canvas), so no pyplot state or GUI backend
is touched and plotting is safe from any thread or headless machine.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aapp.evaluation.metrics import CellSummary, Rate
from aapp.io import atomic_write

#: The panels, left to right: (CellSummary attribute, title).
PANELS = (("refusal_rate", "Refusal rate (harmful prompts)"), ("over_refusal", "Over-refusal (benign prompts)"))
DENSE = "dense"
#: The prompts each panel's rate is measured on: (CellSummary count attribute, label).
PANEL_PROMPTS = {"refusal_rate": ("n_harmful", "harmful"), "over_refusal": ("n_benign", "benign")}

# Methods that coincide (aapp equal to pp when its gate never fires) must stay visible: each method
# gets its own hollow marker and is nudged sideways by DODGE of the ratio axis's span.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
LINESTYLES = ("-", "-.", ":", (0, (5, 1)))  # dense's reference line is "--"
DODGE = 0.02


@dataclass(frozen=True)
class Point:
    ratio: float
    value: float
    lo: float
    hi: float


def sweep_series(summaries: Sequence[CellSummary], dense_method: str = DENSE) -> dict[str, dict[str, list[Point]]]:
    """{panel: {method: points sorted by ratio}}: what the plot draws, as plain data.

    Cells with an undefined rate (no prompts of that label) or no ratio are left out; the
    dense cells (method `dense_method`) are kept under that name, at whatever ratio they have.
    """
    series: dict[str, dict[str, list[Point]]] = {attr: {} for attr, _ in PANELS}
    for attr, _ in PANELS:
        for s in summaries:
            rate: Rate = getattr(s, attr)
            if rate.value is None or (s.ratio is None and s.method != dense_method):
                continue
            lo, hi = rate.ci
            ratio = 0.0 if s.ratio is None else float(s.ratio)
            series[attr].setdefault(s.method, []).append(Point(ratio, rate.value, lo, hi))
        for points in series[attr].values():
            points.sort(key=lambda p: p.ratio)
    return series


def panel_note(summaries: Sequence[CellSummary], attr: str, dense_method: str = DENSE) -> str | None:
    """Why panel `attr` would be empty, as the note drawn in its place; None when it has points."""
    if sweep_series(summaries, dense_method)[attr]:
        return None
    count, label = PANEL_PROMPTS[attr]
    if not any(getattr(s, count) for s in summaries):
        return f"no {label} prompts,\nso nothing to plot"
    return "no cell has a pruning ratio,\nso nothing to plot"

def dodge(methods: Sequence[str], ratios: Sequence[float]) -> dict[str, float]:
    """Each method's sideways offset on the ratio axis: centred on the true ratio, DODGE of the
    axis's span apart, so that equal points sit side by side instead of one on the other."""
    span = (max(ratios) - min(ratios)) if len(ratios) > 1 else 0.1
    step = DODGE * (span or 0.1)
    return {m: (i - (len(methods) - 1) / 2) * step for i, m in enumerate(methods)}


def sweep_figure(summaries: Sequence[CellSummary], dense_method: str = DENSE):
    """The figure: per panel, an errorbar line per method (its own marker, nudged sideways, see
    `dodge`) and the dense model as a horizontal line with its interval shaded; the legend names
    every line and band."""
    from matplotlib.figure import Figure

    series = sweep_series(summaries, dense_method)
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, len(PANELS), sharey=True)
    ratios = sorted({p.ratio for per in series.values() for m, pts in per.items() if m != dense_method for p in pts})
    methods = sorted({m for per in series.values() for m in per if m != dense_method})
    shift = dodge(methods, ratios)
    marker = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(methods)}
    style = {m: LINESTYLES[i % len(LINESTYLES)] for i, m in enumerate(methods)}
    color = {m: f"C{i % 10}" for i, m in enumerate(methods)}  # the same in both panels
    for ax, (attr, title) in zip(axes, PANELS):
        for method, pts in sorted(series[attr].items()):
            if method == dense_method:
                # Dense does not vary with ratio; its mean over cells (normally one) is the line.
                ref = pts[0] if len(pts) == 1 else Point(0.0, sum(p.value for p in pts) / len(pts),
                                                         min(p.lo for p in pts), max(p.hi for p in pts))
                ax.axhline(ref.value, color="black", linestyle="--", linewidth=1, label=method)
                ax.axhspan(ref.lo, ref.hi, color="black", alpha=0.08, linewidth=0, label=f"{method} 95% CI")
                continue
            x = [p.ratio + shift[method] for p in pts]
            y = [p.value for p in pts]
            # Clamped: an interval that rounding puts a hair past its rate must not fail the plot.
            yerr = [[max(0.0, p.value - p.lo) for p in pts], [max(0.0, p.hi - p.value) for p in pts]]
            ax.errorbar(x, y, yerr=yerr, marker=marker[method], markersize=7, markerfacecolor="none",
                        markeredgewidth=1.5, color=color[method], linestyle=style[method], capsize=3, label=method)
        note = panel_note(summaries, attr, dense_method)
        if note:  # an empty panel must not read as data
            ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.set_title(title)
        ax.set_xlabel("pruning ratio")
        if ratios:
            ax.set_xticks(ratios)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    axes[0].set_ylabel("rate (Wilson 95% CI)")
    if len(methods) > 1:
        fig.supxlabel("methods are drawn slightly apart at each ratio so that equal values stay visible",
                      fontsize="x-small", color="grey")
    return fig


def render_png(summaries: Sequence[CellSummary], dense_method: str = DENSE) -> bytes:
    buf = io.BytesIO()
    sweep_figure(summaries, dense_method).savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def plot_sweep(summaries: Sequence[CellSummary], path: str | Path, dense_method: str = DENSE) -> None:
    """Write the sweep plot as a PNG at `path`, atomically."""
    data = render_png(summaries, dense_method)
    with atomic_write(path, "wb") as f:
        f.write(data)


# -- the trade-off ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TradeOff:
    method: str
    ratio: float
    perplexity: float
    refusal: float


def trade_offs(summaries: Sequence[CellSummary]) -> list[TradeOff]:
    """Every cell with both a harmful refusal rate and a perplexity, as a point."""
    return [TradeOff(s.method, 0.0 if s.ratio is None else float(s.ratio), s.perplexity, s.refusal_rate.value)
            for s in summaries if s.perplexity is not None and s.refusal_rate.value is not None]


def pareto_front(points: Sequence[TradeOff]) -> list[TradeOff]:
    """The points no other point beats on both axes (lower perplexity and higher refusal), by perplexity."""
    front = [p for p in points
             if not any(q.perplexity <= p.perplexity and q.refusal >= p.refusal
                        and (q.perplexity, q.refusal) != (p.perplexity, p.refusal) for q in points)]
    return sorted(front, key=lambda p: p.perplexity)


def render_pareto_png(summaries: Sequence[CellSummary]) -> bytes | None:
    """Harmful refusal against perplexity, one point per method x ratio, the Pareto front drawn;
    None when no cell has both."""
    return render_tradeoff_png(trade_offs(summaries))


def render_tradeoff_png(points: Sequence[TradeOff]) -> bytes | None:
    """The Pareto plot of `points` (see render_pareto_png); None when there are none."""
    from matplotlib.figure import Figure

    if not points:
        return None
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for method in sorted({p.method for p in points}):
        pts = sorted((p for p in points if p.method == method), key=lambda p: p.ratio)
        ax.plot([p.perplexity for p in pts], [p.refusal for p in pts], marker="*" if len(pts) == 1 else "o",
                linestyle="-" if len(pts) > 1 else "none", label=method)
        for p in pts:
            if p.ratio:
                ax.annotate(f"{p.ratio:g}", (p.perplexity, p.refusal), textcoords="offset points", xytext=(4, 4),
                            fontsize="x-small")
    front = pareto_front(points)
    ax.step([p.perplexity for p in front], [p.refusal for p in front], where="post", color="grey",
            linestyle=":", linewidth=1, label="Pareto front")
    ax.set_xlabel("perplexity, held-out prose (lower is better)")
    ax.set_ylabel("refusal rate, harmful prompts")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


# -- refusal against what a user pays ---------------------------------------------------------------
@dataclass(frozen=True)
class CostPoint:
    method: str
    ratio: float
    flops: float  # average FLOPs fraction per request over the summary's traffic mix
    rate: Point


def cost_series(summaries: Sequence[CellSummary]) -> dict[str, dict[str, list[CostPoint]]]:
    """{panel: {method: points by average FLOPs on the mix}}: cells with a mix cost and a defined rate."""
    series: dict[str, dict[str, list[CostPoint]]] = {attr: {} for attr, _ in PANELS}
    for attr, _ in PANELS:
        for s in summaries:
            rate: Rate = getattr(s, attr)
            if s.mix_flops is None or rate.value is None:
                continue
            ratio = 0.0 if s.ratio is None else float(s.ratio)
            lo, hi = rate.ci
            series[attr].setdefault(s.method, []).append(CostPoint(s.method, ratio, s.mix_flops,
                                                                   Point(ratio, rate.value, lo, hi)))
        for points in series[attr].values():
            points.sort(key=lambda p: p.flops)
    return series


def render_cost_png(summaries: Sequence[CellSummary]) -> bytes | None:
    """Refusal (harmful) and over-refusal (benign) against the average FLOPs over the traffic mix, one
    curve per method across its ratios, each point labelled with its ratio; None when no cell has a
    mix cost."""
    from matplotlib.figure import Figure

    series = cost_series(summaries)
    if not any(series.values()):
        return None
    mix = next((s.mix for s in summaries if s.mix), {})
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, len(PANELS), sharey=True)
    methods = sorted({m for per in series.values() for m in per})
    for ax, (attr, title) in zip(axes, PANELS):
        for i, method in enumerate(methods):
            pts = series[attr].get(method, [])
            if not pts:
                continue
            yerr = [[max(0.0, p.rate.value - p.rate.lo) for p in pts], [max(0.0, p.rate.hi - p.rate.value) for p in pts]]
            ax.errorbar([p.flops for p in pts], [p.rate.value for p in pts], yerr=yerr, marker=MARKERS[i % len(MARKERS)],
                        markerfacecolor="none", markersize=7, capsize=3, color=f"C{i % 10}",
                        linestyle="-" if len(pts) > 1 else "none", label=method)
            for p in pts:
                if p.ratio:
                    ax.annotate(f"{p.ratio:g}", (p.flops, p.rate.value), textcoords="offset points", xytext=(4, 4),
                                fontsize="x-small")
        ax.set_title(title)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_ylabel("rate (Wilson 95% CI)")
    # One label under both panels: per panel, it is wider than the panel.
    fig.supxlabel("average FLOPs per request, fraction of dense (" +
                  ", ".join(f"{w:g} {label}" for label, w in mix.items()) + ")")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()
