"""AAPP's levers 2 and 3 as pure functions: MLP budget moved by refusal mass, protection spread by it."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aapp.methods.aapp.allocation import apportion, protect_counts, protected_count, shift_channels
from aapp.methods.plan import LayerBudget, PrunePlan, channel_tile, make_plan
from aapp.models.adapters import Geometry


def geometry(layers, heads=8, kv=2, inter=4864):
    return Geometry("qwen2", layers, 896, heads, kv, 64, inter, 1000, "silu", 0.125, (None,) * layers)


@st.composite
def plans(draw):
    """A plan over random shapes, and a refusal mass per layer: from make_plan (every pruned layer
    alike), or with any kept count per pruned layer (so some layers have no room to move)."""
    layers = draw(st.integers(2, 12))
    inter = draw(st.integers(8, 3000))
    multiple = draw(st.sampled_from([1, 16, 64]))
    dense = draw(st.integers(0, layers - 1))
    g = geometry(layers, inter=inter)
    if draw(st.booleans()):
        n_pruned = layers - min(dense, layers - 1)
        ratio = draw(st.floats(0.01, 0.9 * n_pruned / layers))
        plan = make_plan(g, ratio, dense_layers=dense, channel_multiple=multiple)
    else:
        tile = channel_tile(inter, multiple)
        ratios, budgets = [], []
        for i in range(layers):
            channels = inter if i < dense else tile * draw(st.integers(1, inter // tile))
            ratios.append(0.0 if i < dense else 1 - channels / inter + 0.01)
            budgets.append(LayerBudget(heads=4, kv_heads=1, channels=channels))
        plan = PrunePlan(0.3, tuple(ratios), tuple(budgets), tile)
    mass = draw(st.lists(st.floats(0, 10), min_size=layers, max_size=layers))
    return g, plan, mass


@settings(max_examples=300, deadline=None)
@given(plans(), st.floats(0, 1))
def test_risk_budgets_move_channels_by_mass_and_keep_the_total(case, shift):
    g, plan, mass = case
    tile, inter = plan.channel_tile, g.intermediate_size
    out = shift_channels(plan, inter, mass, shift)
    assert sum(b.channels for b in out) == sum(b.channels for b in plan.budgets)  # exactly
    pruned = [i for i, r in enumerate(plan.layer_ratios) if r > 0]
    delta = {i: out[i].channels - plan.budgets[i].channels for i in pruned}
    for i, (new, old) in enumerate(zip(out, plan.budgets)):
        assert (new.heads, new.kv_heads) == (old.heads, old.kv_heads)  # heads never move
        if i not in pruned:
            assert new == old
            continue
        assert tile <= new.channels <= inter and delta[i] % tile == 0
        if old.channels % tile == 0:
            assert new.channels % tile == 0
        assert delta[i] <= shift * (inter - old.channels) and -delta[i] <= shift * (old.channels - tile)
    for i in pruned:
        for j in pruned:
            if mass[i] >= mass[j] and delta[j] > 0:
                assert delta[i] >= 0, (i, j)  # more mass never gives while less mass gains
    assert shift_channels(plan, inter, mass, 0.0) == plan.budgets


def test_risk_budgets_go_to_the_layer_of_most_mass():
    g = geometry(6, inter=4096)
    plan = make_plan(g, 0.3, dense_layers=2)
    out = shift_channels(plan, g.intermediate_size, [9.0, 9.0, 4.0, 1.0, 1.0, 2.0], 0.5)
    planned = plan.budgets[2].channels
    moved = [b.channels - planned for b in out[2:]]
    # Layer 2 is furthest from the mean (2): it gets half its pruned channels back, to the tile below.
    assert moved[0] == (4096 - planned) // 2 // 64 * 64 and moved[0] > 0
    assert moved[1] == moved[2] < 0 == moved[3] and sum(moved) == 0
    assert out[:2] == plan.budgets[:2]


@settings(max_examples=300, deadline=None)
@given(plans(), st.floats(0, 1), st.booleans())
def test_mass_protection_spreads_the_flat_total_over_pruned_layers(case, protect, below_half):
    g, plan, mass = case
    masses = [(m, (7 * m) % 3) for m in mass]  # heads and channels by different masses
    counts = protect_counts(plan, g, protect, masses, plan.budgets, below_half)
    pruned = [i for i, r in enumerate(plan.layer_ratios) if r > 0]
    for site, units in enumerate((g.num_heads, g.intermediate_size)):
        share = [c[site] for c in counts]
        cap = {i: min((plan.budgets[i].heads, plan.budgets[i].channels)[site],
                      (units - 1) // 2 if below_half else units) for i in pruned}
        flat_total = protected_count(protect, units) * len(pruned)
        assert sum(share) == min(flat_total, sum(cap.values()))
        assert all(share[i] == 0 for i in range(g.num_layers) if i not in pruned)
        for i in pruned:
            assert share[i] <= cap[i]
            for j in pruned:
                if masses[i][site] > masses[j][site] and share[i] < cap[i]:
                    assert share[i] >= share[j], (site, i, j)


def test_apportion_is_largest_remainder_with_capped_overflow():
    assert apportion(10, [3.0, 1.0, 1.0], [10, 10, 10]) == [6, 2, 2]
    assert apportion(10, [2.0, 1.0, 1.0], [10, 10, 10]) == [5, 3, 2]  # 5, 2.5, 2.5: the tie to the first
    assert apportion(10, [8.0, 1.0, 1.0], [3, 10, 10]) == [3, 4, 3]   # 3 over the cap goes to the others
    assert apportion(10, [0.0, 0.0], [4, 10]) == [4, 6]
    assert apportion(10, [1.0, 1.0], [2, 3]) == [2, 3]                # no room for more


@pytest.mark.parametrize("bad", [dict(protect_by="heavy"), dict(layer_budget="greedy"), dict(budget_shift=1.5),
                                 dict(budget_shift=-0.1)])
def test_lever_options_are_validated(bad):
    from aapp.errors import AappError
    from aapp.methods.aapp import AAPPOptions

    with pytest.raises(AappError, match="protect_by|layer_budget|budget_shift"):
        AAPPOptions(**bad)


def test_a_subnormal_mass_difference_does_not_overflow():
    # Hypothesis found it: masses that differ by 1e-308 made the tiles-per-excess scale infinite. Moves
    # depend on the masses' ratios only, so these move channels as masses of 0, 0 and 1 would.
    from aapp.methods.aapp.allocation import shift_channels
    from aapp.methods.plan import LayerBudget, PrunePlan

    budgets = tuple(LayerBudget(heads=4, kv_heads=1, channels=c) for c in (8, 8, 8, 1, 2, 1))
    plan = PrunePlan(0.3, (0.0, 0.0, 0.0, 0.885, 0.76, 0.885), budgets, channel_tile=1)
    tiny = shift_channels(plan, 8, [0.0] * 5 + [1.1125369292536007e-308], 1.0)
    assert tiny == shift_channels(plan, 8, [0.0] * 5 + [1.0], 1.0)
    assert sum(b.channels for b in tiny) == sum(b.channels for b in budgets)
