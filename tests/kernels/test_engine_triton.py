"""The pruned forward on the triton backend (interpreted on CPU) computes what the torch backend does."""

import torch

from aapp.generation import encode, positions
from aapp.methods.pp import PPScoring, ProbePruning
from aapp.pruning.engine import PruneOptions, prune_model
from tests.conftest import PROMPTS, make_loaded


class ProbeOnly(ProbePruning):
    needs_calibration = False

    def __init__(self):
        super().__init__(PPScoring(scores_from="probe"))


def test_triton_backend_matches_torch_backend():
    loaded = make_loaded("tiny-qwen2")  # q/k/v biases and GQA on the kernel path
    ids, attn = encode(loaded.tokenizer, PROMPTS[:2], "cpu")
    down = loaded.adapter.layer_parts(loaded.model, 2).down_proj
    layout = down.weight.stride()
    outs = {}
    for backend in ("torch", "triton"):
        with prune_model(loaded, ProbeOnly(), PruneOptions(ratio=0.4, dense_layers=1, backend=backend)) as h:
            assert h.backend.name == backend
            with torch.no_grad():
                outs[backend] = loaded.model(input_ids=ids, attention_mask=attn, position_ids=positions(attn)).logits
        assert down.weight.stride() == layout  # the K-major relayout is undone
    valid = attn.bool()
    torch.testing.assert_close(outs["triton"][valid], outs["torch"][valid], rtol=1e-4, atol=1e-4)


def test_k_major_relayout_replaces_the_original():
    """The triton path stores down_proj K-major in the original's place: no second copy is kept."""
    import gc
    import weakref

    loaded = make_loaded("tiny-qwen2")
    down = loaded.adapter.layer_parts(loaded.model, 2).down_proj
    before = down.weight.detach().clone()
    original = weakref.ref(down.weight.untyped_storage())
    with prune_model(loaded, ProbeOnly(), PruneOptions(ratio=0.4, dense_layers=1, backend="triton")):
        gc.collect()
        assert down.weight.stride() == (1, down.weight.shape[0])  # K-major
        assert original() is None  # nothing (the engine included) holds the row-major copy
        torch.testing.assert_close(down.weight, before, rtol=0, atol=0)
    assert down.weight.is_contiguous()
    torch.testing.assert_close(down.weight, before, rtol=0, atol=0)
