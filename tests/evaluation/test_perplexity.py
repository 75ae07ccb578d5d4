import math

import pytest
import torch

from aapp.calibration.run import TextSettings, calibrate_text, pack_tokens
from aapp.errors import AappError, InputError
from aapp.evaluation.perplexity import perplexity, window_perplexity
from aapp.methods import Router, RowDecisions
from aapp.methods.base import Route
from aapp.methods.pp import ProbePruning
from aapp.pruning import flops
from aapp.methods import make_method
from aapp.pruning.engine import PruneOptions, prune_model
from tests.conftest import FAMILIES, make_loaded

TEXT = [
    "The quick brown fox jumps over the lazy dog while the small cat sleeps on the warm mat. " * 3,
    "Seven bakers sold forty loaves of fresh bread at the busy market before noon each day. " * 3,
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls gain nothing from a second thread, and on a busy 2-core machine
    two OpenMP threads that wait on each other run these tests many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request):
    """A tiny model fitted to TEXT, so that it has something for pruning to destroy.

    A random-weight model predicts near-uniformly whether pruned or not; one that has
    learned the text loses that knowledge as structures are removed.
    """
    torch.manual_seed(0)
    loaded = make_loaded(request.param)
    ids = pack_tokens(loaded.tokenizer, TEXT * 2, 16, 32)
    opt = torch.optim.Adam(loaded.model.parameters(), lr=1e-2)
    loaded.model.train()
    for _ in range(40):
        loss = loaded.model(input_ids=ids, labels=ids, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    loaded.model.eval()
    loaded.model.requires_grad_(False)
    return loaded


def test_equals_direct_computation(tiny):
    # 5 windows in batches of 3: an uneven last batch must weigh by tokens, not by batch.
    res = perplexity(tiny, TEXT, seq_len=24, max_windows=5, batch_size=3)
    windows = pack_tokens(tiny.tokenizer, TEXT, 5, 24)
    with torch.no_grad():
        logits = tiny.model(input_ids=windows).logits.double()
    logp = logits[:, :-1].log_softmax(-1).gather(-1, windows[:, 1:, None]).squeeze(-1)
    nll = -logp.mean().item()
    assert res.windows == 5 and res.tokens == 5 * 23
    assert res.nll == pytest.approx(nll, rel=1e-5)
    assert res.ppl == pytest.approx(math.exp(nll), rel=1e-5)
    assert res.flops_fraction is None


def test_max_windows_none_uses_all_text(tiny_llama):
    all_windows = pack_tokens(tiny_llama.tokenizer, TEXT, 10**6, 16)
    res = perplexity(tiny_llama, TEXT, seq_len=16, batch_size=8)
    assert res.windows == len(all_windows) > 8


def test_pruned_is_deterministic_and_counts_flops(tiny_llama):
    cal = calibrate_text(tiny_llama, TEXT, TextSettings(samples=4, seq_len=32, batch_size=2), "test")
    dense = perplexity(tiny_llama, TEXT, seq_len=32, batch_size=2)
    with prune_model(tiny_llama, make_method("pp"), PruneOptions(ratio=0.4, dense_layers=1), cal) as h:
        a = perplexity(tiny_llama, TEXT, seq_len=32, batch_size=2, handle=h)
        b = perplexity(tiny_llama, TEXT, seq_len=32, batch_size=2, handle=h)
    assert a == b
    assert a.ppl != dense.ppl
    assert 0 < a.flops_fraction < 1


class AlternateRouter(ProbePruning):
    """Probe Pruning whose router, at layer 1, sends every second row of a batch to run dense."""

    def router(self):
        return Router(1, self.decide)

    def decide(self, x, token_mask):
        n = x.shape[0]
        return RowDecisions([Route(True, 0.0) if i % 2 else Route() for i in range(n)], [{}] * n)


def test_a_routed_method_scores_each_group_of_windows_under_its_route(tiny_llama):
    # Each group's windows score as they do alone (pp's half as a batch of its own, the other half
    # dense), and the FLOPs are the groups' own plus the prefill the router stopped.
    cal = calibrate_text(tiny_llama, TEXT, TextSettings(samples=4, seq_len=32, batch_size=2), "test")
    windows = pack_tokens(tiny_llama.tokenizer, TEXT * 2, 4, 16)
    opts = PruneOptions(ratio=0.4, dense_layers=1)
    with prune_model(tiny_llama, AlternateRouter(), opts, cal) as h:
        routed = window_perplexity(tiny_llama, windows, batch_size=4, handle=h)
    with prune_model(tiny_llama, make_method("pp"), opts, cal) as h:
        pruned = window_perplexity(tiny_llama, windows[0::2], batch_size=2, handle=h)
    with prune_model(tiny_llama, make_method("dense"), PruneOptions(), cal) as h:
        window_perplexity(tiny_llama, windows, batch_size=4, handle=h)
        all_dense = h.record.flops.dense
    dense = window_perplexity(tiny_llama, windows[1::2], batch_size=2)
    assert routed.nll == pytest.approx((pruned.nll + dense.nll) / 2, rel=1e-9)
    stopped = flops.dense_block_flops(tiny_llama.geometry, 4 * 16, (16 + 1) / 2)  # layer 0, before the router
    want = (pruned.flops_fraction + 1.0) / 2 + stopped / all_dense
    assert routed.flops_fraction == pytest.approx(want, rel=1e-9)


def test_pruning_harder_raises_perplexity(trained):
    cal = calibrate_text(trained, TEXT, TextSettings(samples=8, seq_len=32, batch_size=4), "test")
    ppl = []
    for ratio in (0.0, 0.3, 0.6):
        with prune_model(trained, make_method("pp"), PruneOptions(ratio=ratio, dense_layers=1), cal) as h:
            ppl.append(perplexity(trained, TEXT, seq_len=32, handle=h).ppl)
    # The fitted model predicts its text almost surely (ppl ~1.004); removing 60% of the
    # pruned layers' compute costs it well over 10%, in every family we tried (+60% or more).
    assert ppl[0] < 1.05
    assert ppl[0] < ppl[1] < ppl[2]
    assert ppl[2] > 1.2 * ppl[0]


def test_text_shorter_than_a_window(tiny_llama):
    with pytest.raises(InputError, match="shorter than one perplexity window"):
        perplexity(tiny_llama, ["too short"], seq_len=64)


@pytest.mark.parametrize("kw", [{"seq_len": 1}, {"batch_size": 0}, {"max_windows": 0}])
def test_bad_settings(tiny_llama, kw):
    with pytest.raises(InputError):
        perplexity(tiny_llama, TEXT, **kw)


def test_handle_of_another_model(tiny_llama):
    other = make_loaded("tiny-llama", seed=1)
    with prune_model(other, make_method("dense"), PruneOptions()) as h:
        with pytest.raises(AappError, match="another model"):
            perplexity(tiny_llama, TEXT, seq_len=16, handle=h)


def _answer_nll_by_hand(loaded, prompt: str, answer: str) -> tuple[float, int]:
    """One unpadded sequence, scored on the answer's tokens: the definition, without batching."""
    from aapp.chat import render_all
    (head,), templated = render_all(loaded.tokenizer, [prompt])
    h = loaded.tokenizer(head, add_special_tokens=not templated)["input_ids"]
    a = loaded.tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([h + a])
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")[len(h) - 1:]
    return float(nll.sum()), len(a)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_answer_perplexity_scores_only_the_answer_tokens_at_any_padding(tiny, batch_size):
    from aapp.evaluation.perplexity import answer_perplexity
    prompts = ["Hi there.", "How do I bake bread at home?", "A much longer question about the small cat " * 3]
    answers = ["Hello! How can I help?", "Mix flour and water, knead, rest and bake.", "The cat sleeps."]
    got = answer_perplexity(tiny, prompts, answers, batch_size=batch_size)
    parts = [_answer_nll_by_hand(tiny, p, a) for p, a in zip(prompts, answers)]
    nll = sum(n for n, _ in parts) / sum(k for _, k in parts)
    assert got.tokens == sum(k for _, k in parts)
    assert got.nll == pytest.approx(nll, rel=1e-4)


def test_answer_perplexity_refuses_mismatched_inputs(tiny_llama):
    from aapp.evaluation.perplexity import answer_perplexity
    with pytest.raises(InputError, match="as many answers"):
        answer_perplexity(tiny_llama, ["a", "b"], ["only one"])
