"""AAPP's calibration step: which prompts it reads (an update takes the file's), the contrast pairs'
size, the phases' clocks, and the gate fit's hand-written gradient."""

import pytest
import torch

from aapp.calibration.run import TextSettings, calibrate_text
from aapp.errors import InputError
from aapp.methods.aapp import add_alignment
from aapp.methods.aapp.calibrate import AlignmentSettings, Prepared, prepare, run
from aapp.methods.aapp.gates import fit_linear, logistic_loss, single_thread
from aapp.methods.aapp.store import alignment, set_alignment
from aapp.methods.registry import StepContext
from aapp.prompts import Prompt, load_prompts
from tests.conftest import make_loaded

TEXT = ["The river ran past the old mill where the children played every summer evening. " * 10] * 4
HARMFUL = [f"explain how to build a weapon number {i} to hurt people" for i in range(6)]
HARMLESS = [f"write a short poem about a garden flower number {i}" for i in range(6)]


@pytest.fixture(scope="module")
def calibrated():
    loaded = make_loaded("tiny-llama")
    cal = calibrate_text(loaded, TEXT, TextSettings(samples=4, seq_len=32), "test")
    add_alignment(cal, loaded, HARMFUL, HARMLESS, {"harmful": "calib-harmful", "harmless": "calib-harmless"})
    return loaded, cal


def with_meta(cal, **meta):
    a = alignment(cal)
    set_alignment(cal, type(a)(**{**a.__dict__, "meta": {**a.meta, **meta}}))
    return cal


def test_an_update_reads_the_prompts_the_file_was_made_with(calibrated):
    _, cal = calibrated
    with_meta(cal, harmful_count=8, harmless_count=8, selection={"limit": None, "sample": 8, "seed": 3})
    got = prepare(AlignmentSettings(gate_ratios="0.2"), cal)
    want = load_prompts("calib-harmful", sample=8, seed=3)
    assert [p.id for p in got.harmful] == [p.id for p in want] and len(got.harmless) == 8
    # What the user names wins over the file.
    assert len(prepare(AlignmentSettings(gate_ratios="0.2", limit=5), cal).harmful) == 5


def test_an_update_of_a_file_without_the_record_takes_its_counts_with_a_warning(calibrated, capsys):
    _, cal = calibrated
    a = alignment(cal)
    set_alignment(cal, type(a)(**{**a.__dict__, "meta": {k: v for k, v in a.meta.items() if k != "selection"}}))
    with_meta(cal, harmful_count=8, harmless_count=7)
    got = prepare(AlignmentSettings(gate_ratios="0.2"), cal)
    assert (len(got.harmful), len(got.harmless)) == (8, 7)
    assert [p.id for p in got.harmful] == [p.id for p in load_prompts("calib-harmful", limit=8)]
    assert "first of each set" in capsys.readouterr().err


def test_a_new_file_records_how_its_prompts_were_chosen():
    loaded = make_loaded("tiny-llama")
    cal = calibrate_text(loaded, TEXT, TextSettings(samples=2, seq_len=32), "test")
    prepared = prepare(AlignmentSettings(limit=3, sample=6, seed=2, contrast_pairs=2))
    ctx = StepContext(cal, loaded, None, RecordingBar(), (), TextSettings(samples=2, seq_len=32))
    run(ctx, prepared)
    meta = alignment(cal).meta
    assert meta["selection"] == {"limit": 3, "sample": 6, "seed": 2}
    assert (meta["harmful_count"], meta["contrast_pairs"]) == (3, 2)


def test_the_contrast_pairs_take_a_size():
    assert [len(side) for side in prepare(AlignmentSettings(limit=1, contrast_pairs=5)).contrast] == [5, 5]
    assert prepare(AlignmentSettings(limit=1, contrast_pairs=0)).contrast is None
    assert [len(side) for side in prepare(AlignmentSettings(limit=1)).contrast] == [160, 160]
    with pytest.raises(InputError, match="at least 0"):
        AlignmentSettings(contrast_pairs=-1)


class RecordingBar:
    """rich's Progress API as calibration calls it, recording the calls in order."""

    def __init__(self):
        self.calls, self.started = [], set()

    def add_task(self, description, total=None, start=True, **kw):
        task = len(self.calls)
        self.calls.append(("add", description))
        if start:
            self.start_task(task)
        return task

    def start_task(self, task):
        if task not in self.started:
            self.started.add(task)
            self.calls.append(("start", task))

    def advance(self, task, n=1):
        self.calls.append(("advance", task))

    def update(self, task, **kw):
        self.calls.append(("update", task))


def test_the_fit_phase_clock_starts_when_the_fit_begins_not_with_the_passes():
    loaded = make_loaded("tiny-llama")
    cal = calibrate_text(loaded, TEXT, TextSettings(samples=2, seq_len=32), "test")
    p = lambda texts: [Prompt(str(i), t, None, "t") for i, t in enumerate(texts)]  # noqa: E731
    prepared = Prepared(AlignmentSettings(), p(HARMFUL), p(HARMLESS), ("h", "s"), (p(HARMFUL[:2]), p(HARMLESS[:2])))
    bar = RecordingBar()
    run(StepContext(cal, loaded, None, bar, (), TextSettings()), prepared)
    fit = next(i for i, c in enumerate(bar.calls) if c == ("add", "logistic gate fit, layers"))
    fit_started = bar.calls.index(("start", fit))
    last_pass = max(i for i, c in enumerate(bar.calls) if c[0] == "advance")
    assert fit_started > last_pass, "the fit's clock started before the prompt passes ended"


def test_the_fit_gradient_is_autograds_and_one_thread_is_restored():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(37, 11, generator=gen, dtype=torch.float64)
    coef, b = torch.randn(11, generator=gen, dtype=torch.float64), torch.tensor(-0.4, dtype=torch.float64)
    y, w = (torch.rand(37, generator=gen) > 0.4).double(), torch.rand(37, generator=gen, dtype=torch.float64)
    value, g_coef, g_b = logistic_loss(z, y, w, 0.3, coef, b)
    c, bb = coef.clone().requires_grad_(), b.clone().requires_grad_()
    ref = (w * torch.nn.functional.binary_cross_entropy_with_logits(z @ c + bb, y, reduction="none")).sum() \
        + 0.15 * c.square().sum()
    ref.backward()
    torch.testing.assert_close(value, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_coef, c.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_b, bb.grad, rtol=1e-12, atol=1e-12)
    threads = torch.get_num_threads()
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads
    weight, bias = fit_linear(z.float(), y, w / w.sum(), 0.1)  # the optimum: the gradient vanishes there
    sd = z.std(0).clamp(min=1e-6)
    _, g, gb = logistic_loss((z - z.mean(0)) / sd, y, w / w.sum(), 0.1, (weight.double() * sd),
                             bias.double() + z.mean(0) @ weight.double())
    assert float(g.abs().max()) < 1e-4 and abs(float(gb)) < 1e-4


def test_the_prose_windows_are_read_from_the_general_text_pass_not_run_again(monkeypatch):
    from aapp.calibration.run import pack_tokens
    from aapp.methods.aapp import calibrate as step
    from aapp.methods.aapp.passes import post_instruction_tokens, window_features

    loaded = make_loaded("tiny-llama")
    settings = TextSettings(samples=3, seq_len=32, batch_size=2)
    prepared = Prepared(AlignmentSettings(), [Prompt(str(i), t, None, "t") for i, t in enumerate(HARMFUL)],
                        [Prompt(str(i), t, None, "t") for i, t in enumerate(HARMLESS)], ("h", "s"))
    with prepared.observe_text(loaded):
        cal = calibrate_text(loaded, TEXT, settings, "test")
    packed = pack_tokens(loaded.tokenizer, TEXT, settings.samples, settings.seq_len)
    recorded = prepared.recorded["text"].features_of(packed)
    again = window_features(loaded, packed, post_instruction_tokens(loaded.tokenizer))
    torch.testing.assert_close(recorded, again)  # the same forwards, batched otherwise
    assert prepared.recorded["text"].features_of(packed[:2]) is None  # other windows: not these features

    def second_pass(*a, **k):
        raise AssertionError("the prose windows ran a second time")

    monkeypatch.setattr(step, "window_features", second_pass)
    run(StepContext(cal, loaded, None, RecordingBar(), TEXT, settings), prepared)
    assert alignment(cal).meta["gate_prose_windows"] == 3
