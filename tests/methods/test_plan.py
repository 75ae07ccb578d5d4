import pytest

from aapp.errors import AappError
from aapp.models.adapters import Geometry
from aapp.methods.plan import make_plan


def geometry(layers=24, heads=14, kv=2, inter=4864):
    return Geometry("qwen2", layers, 896, heads, kv, 64, inter, 1000, "silu", 0.125, (None,) * layers)


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.3, 0.4])
def test_layer_ratios_average_to_nominal(ratio):
    plan = make_plan(geometry(), ratio)
    assert sum(plan.layer_ratios) / len(plan.layer_ratios) == pytest.approx(ratio)
    assert plan.layer_ratios[:3] == (0.0, 0.0, 0.0)
    assert len(set(plan.layer_ratios[3:])) == 1


def test_kept_counts_follow_layer_ratio_and_tile():
    g = geometry()
    plan = make_plan(g, 0.3)
    r = plan.layer_ratios[5]
    b = plan.budgets[5]
    assert b.channels % 64 == 0
    assert abs(b.channels - g.intermediate_size * (1 - r)) <= 32
    assert b.heads == round(g.num_heads * (1 - r))
    assert plan.budgets[0].channels == g.intermediate_size and plan.budgets[0].heads == g.num_heads


def test_ratio_zero_is_dense():
    g = geometry()
    plan = make_plan(g, 0.0)
    assert all(plan.is_dense(i, g) for i in range(g.num_layers))


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_out_of_range(ratio):
    with pytest.raises(AappError, match="ratio"):
        make_plan(geometry(), ratio)


def test_ratio_too_high_for_dense_layers():
    with pytest.raises(AappError, match="dense"):
        make_plan(geometry(layers=4), 0.9, dense_layers=3)


LLAMA2_7B = Geometry("llama", 32, 4096, 32, 32, 128, 11008, 32000, "silu", 128 ** -0.5, (None,) * 32)
GEMMA3_12B = Geometry("gemma3_text", 48, 3840, 16, 8, 256, 15360, 262208, "gelu_tanh", 256 ** -0.5, (None,) * 48)


@pytest.mark.parametrize("g", [geometry(), LLAMA2_7B, GEMMA3_12B], ids=["qwen2.5-0.5b", "llama2-7b", "gemma3-12b"])
@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.3, 0.4, 0.5])
def test_flops_removed_after_rounding_match_the_nominal_ratio(g, ratio):
    """Heads and channels are whole and tile-rounded, and kv heads are ceil'd; what is actually removed
    of the projections' FLOPs stays within 1.5 points of the ratio asked for."""
    from aapp.pruning.flops import block_flops, dense_block_flops

    plan = make_plan(g, ratio)
    kept = sum(block_flops(g, 1, 0, b.heads, b.kv_heads, b.channels) for b in plan.budgets)
    removed = 1 - kept / (dense_block_flops(g, 1, 0) * g.num_layers)
    assert removed == pytest.approx(ratio, abs=0.015)


@pytest.mark.parametrize("layers, dense", [(24, 3), (4, 1), (32, 0), (2, 1)])
def test_the_error_names_the_largest_ratio_and_that_ratio_plans(layers, dense):
    from aapp.methods.plan import max_ratio

    top = max_ratio(layers, dense)
    with pytest.raises(AappError, match=rf"the most this {layers}-layer model allows is {top} with dense_layers={dense}"):
        make_plan(geometry(layers=layers), 0.99, dense_layers=dense)
    make_plan(geometry(layers=layers), top, dense_layers=dense)  # the value named runs
    with pytest.raises(AappError, match="the most"):
        make_plan(geometry(layers=layers), round(top + 0.002, 3), dense_layers=dense)


@pytest.mark.parametrize("dense", [4, 5])
def test_dense_layers_at_or_above_the_layer_count_is_an_error_not_a_clamp(dense):
    """A plan that would keep every layer dense is refused (it was clamped to layers - 1, while the
    rows' provenance recorded the value asked for)."""
    with pytest.raises(AappError, match=rf"dense_layers={dense} keeps every layer of this 4-layer model dense.*"
                                        r"give dense_layers 3 or fewer"):
        make_plan(geometry(layers=4), 0.2, dense_layers=dense)
    assert make_plan(geometry(layers=4), 0.0, dense_layers=dense).layer_ratios == (0.0,) * 4  # ratio 0: all dense
