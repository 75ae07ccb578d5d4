import pytest

from aapp.evaluation.plot import plot_sweep, sweep_figure, sweep_series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_series_hold_each_method_sorted_by_ratio(sweep):
    series = sweep_series(sweep)
    refusal = series["refusal_rate"]
    assert set(refusal) == {"dense", "pp", "aapp"}
    assert [(p.ratio, p.value) for p in refusal["pp"]] == [(0.2, 0.8), (0.4, 0.5)]
    assert [(p.ratio, p.value) for p in refusal["aapp"]] == [(0.2, 0.9), (0.4, 0.9)]
    assert [p.value for p in series["over_refusal"]["aapp"]] == [0.1, 0.2]
    for pts in refusal.values():
        assert all(p.lo <= p.value <= p.hi for p in pts)


def _drawn(ax):
    """{label: (x, y, error bar segments)}: errorbar containers, plus labelled plain lines (dense)."""
    out = {c.get_label(): (list(c[0].get_xdata()), list(c[0].get_ydata()), c[2][0].get_segments())
           for c in ax.containers}
    for ln in ax.get_lines():
        if not ln.get_label().startswith("_"):
            out[ln.get_label()] = (list(ln.get_xdata()), list(ln.get_ydata()), None)
    return out


def test_figure_draws_expected_lines(sweep):
    fig = sweep_figure(sweep)
    ax_refusal, ax_over = fig.axes[:2]
    refusal, over = _drawn(ax_refusal), _drawn(ax_over)
    assert set(refusal) == set(over) == {"dense", "pp", "aapp"}
    x, y, bars = refusal["pp"]
    assert x == pytest.approx([0.2, 0.4], abs=0.01) and y == pytest.approx([0.8, 0.5])  # nudged, see dodge
    # Error bars span the Wilson interval: 5 of 10 -> [0.2366, 0.7634].
    assert [bars[1][0][1], bars[1][1][1]] == pytest.approx([0.2366, 0.7634], abs=1e-4)
    assert refusal["dense"][1] == pytest.approx([0.9, 0.9])  # horizontal reference line
    assert over["aapp"][1] == pytest.approx([0.1, 0.2])
    assert {t.get_text() for t in ax_refusal.get_legend().get_texts()} == {"dense", "dense 95% CI", "aapp", "pp"}


def test_plot_file_is_a_valid_png(sweep, tmp_path):
    import matplotlib.image as mpimg

    path = tmp_path / "sub" / "plot.png"
    plot_sweep(sweep, path)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert not list(path.parent.glob(".*.tmp"))


def test_plot_survives_cells_without_labels(make_cell, tmp_path):
    cells = [make_cell("pp", 0.2, (0, 0), (3, 4))]  # no harmful prompts: refusal rate undefined
    series = sweep_series(cells)
    assert series["refusal_rate"] == {} and len(series["over_refusal"]["pp"]) == 1
    plot_sweep(cells, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("n", [12, 24, 48, 64, 100])
def test_all_or_nothing_cells_plot(make_cell, tmp_path, n):
    """0% and 100% cells (sizes where the bound used to miss 0 by 1e-17): bars reach 0 and 1 exactly."""
    from aapp.evaluation.metrics import wilson

    cells = [make_cell("dense", None, (n, n), (0, n)), make_cell("pp", 0.4, (0, n), (n, n))]
    refusal, over = sweep_figure(cells).axes[:2]
    (bars,) = [c[2][0].get_segments() for c in refusal.containers]
    assert bars[0][0][1] == 0.0 and bars[0][1][1] == pytest.approx(wilson(0, n)[1])
    (bars,) = [c[2][0].get_segments() for c in over.containers]
    assert bars[0][1][1] == 1.0 and bars[0][0][1] == pytest.approx(wilson(n, n)[0])
    plot_sweep(cells, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes().startswith(PNG_MAGIC)


def test_pareto_front_keeps_the_points_nothing_beats_on_both_axes(sweep):
    from dataclasses import replace

    from aapp.evaluation.plot import pareto_front, render_pareto_png, trade_offs

    assert render_pareto_png(sweep) is None  # no perplexity: nothing to draw
    ppl = {("dense", None): 10.0, ("pp", 0.2): 12.0, ("pp", 0.4): 15.0, ("aapp", 0.4): 16.0, ("aapp", 0.2): 12.5}
    cells = [replace(s, perplexity=ppl[(s.method, s.ratio)]) for s in sweep]
    points = trade_offs(cells)
    assert len(points) == 5
    # dense (10, 0.9) beats every other cell but aapp 0.2 and 0.4, which tie it on refusal at higher perplexity.
    assert [(p.method, p.ratio) for p in pareto_front(points)] == [("dense", 0.0)]
    cells[0] = replace(cells[0], perplexity=13.0)
    assert [(p.method, p.ratio) for p in pareto_front(trade_offs(cells))] == [("pp", 0.2), ("aapp", 0.2)]
    png = render_pareto_png(cells)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_empty_panel_carries_a_note_saying_why():
    from aapp.evaluation.metrics import summarize
    from aapp.evaluation.plot import PANELS, sweep_figure

    harmful_only = [summarize("dense", None, [True, False], ["harmful", "harmful"], judge="keyword"),
                    summarize("pp", 0.3, [False, False], ["harmful", "harmful"], judge="keyword")]
    fig = sweep_figure(harmful_only)
    texts = {title: " ".join(t.get_text() for t in ax.texts) for ax, (_, title) in zip(fig.axes, PANELS)}
    assert texts[PANELS[0][1]] == ""
    assert "no benign prompts" in texts[PANELS[1][1]]


def test_methods_that_coincide_stay_visible_and_every_band_is_in_the_legend(make_cell):
    # aapp equal to pp at every ratio (a gate that never fires): drawn at the same place, pp hid aapp.
    cells = [make_cell("dense", None, (9, 10), (1, 10))] + [make_cell(m, r, (5, 10), (1, 10))
                                                           for m in ("aapp", "pp") for r in (0.2, 0.4)]
    for ax in sweep_figure(cells).axes[:2]:
        aapp, pp = (next(c for c in ax.containers if c.get_label() == m) for m in ("aapp", "pp"))
        assert aapp[0].get_ydata().tolist() == pp[0].get_ydata().tolist()
        assert all(a < p for a, p in zip(aapp[0].get_xdata(), pp[0].get_xdata()))  # side by side
        assert aapp[0].get_marker() != pp[0].get_marker() and aapp[0].get_markerfacecolor() == "none"
        labels = {t.get_text() for t in ax.get_legend().get_texts()}
        assert labels == {"dense", "dense 95% CI", "aapp", "pp"}
        # Every drawn band (the shaded dense interval) has its legend entry.
        assert all(not p.get_label().startswith("_") for p in ax.patches)
