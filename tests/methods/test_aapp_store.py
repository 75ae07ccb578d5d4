"""AAPP's section of the calibration file: its typed statistics through the file and back."""

import json

import pytest
import torch
from safetensors.torch import save_file

from aapp.calibration.store import FORMAT, Calibration, SiteStats, load_calibration, save_calibration, to_tensors
from aapp.errors import CalibrationError
from aapp.methods.aapp.store import Alignment, GateFit, PromptSetStats, PrunedThresholds, alignment, set_alignment


def test_alignment_round_trips_through_the_file(tmp_path):
    cal = _aligned(torch.Generator().manual_seed(0))
    path = tmp_path / "c.safetensors"
    save_calibration(cal, path)
    back = load_calibration(path)
    a = alignment(back)
    assert set(a.gates) == {"direction", "logistic"} and a.post_instruction_tokens == 2
    assert a.gates["direction"].weight is None and a.gates["logistic"].weight.shape == (3, 4)
    before, after = to_tensors(cal), to_tensors(back)
    assert before.keys() == after.keys() and len(before) == 4 + 2 * 6 + 2 + 4
    for key in before:  # harmful and harmless never trade places, nor mean and mean square
        assert torch.equal(before[key], after[key]), key
    assert "align.resid.harmless.energy" in after  # the name files written before typing used


def test_a_file_missing_an_alignment_tensor_is_refused(tmp_path):
    tensors = {k: torch.zeros(2, 4) for k in ("attn.sq_mean", "mlp.sq_mean", "attn.mean", "mlp.mean")}
    tensors["align.attn.harmful.mean"] = torch.zeros(2, 4)
    path = tmp_path / "c.safetensors"
    save_file(tensors, str(path), metadata={"aapp": json.dumps({"format": FORMAT})})
    with pytest.raises(CalibrationError, match="alignment section lacks align.attn.harmful.sq_mean"):
        alignment(load_calibration(path))


def test_a_format_1_file_still_loads_with_its_alignment(tmp_path):
    """Before sections, AAPP's metadata sat among the file's own: its tensors are laid out the same."""
    cal = _aligned(torch.Generator().manual_seed(3))
    a = alignment(cal)
    meta = {"format": "aapp-calibration/1", "fingerprint": "f", "harmful": "calib-harmful", "post_instruction_tokens": 2}
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in to_tensors(cal).items()}, str(path), metadata={"aapp": json.dumps(meta)})
    back = load_calibration(path)
    old = alignment(back)
    assert old.post_instruction_tokens == 2 and old.meta["harmful"] == "calib-harmful" and old.pruned is None
    assert torch.equal(old.gates["logistic"].weight, a.gates["logistic"].weight)
    assert torch.equal(old.harmless.resid.sq_mean, a.harmless.resid.sq_mean)


def _aligned(gen, pruned=None):
    def stats(c):
        return SiteStats(torch.randn(3, c, generator=gen), torch.rand(3, c, generator=gen))

    def prompt_set():
        return PromptSetStats(attn=stats(8), mlp=stats(16), resid=stats(4))

    gates = {"direction": GateFit(torch.rand(3, generator=gen), torch.randn(3, generator=gen)),
             "logistic": GateFit(torch.rand(3, generator=gen), torch.randn(3, generator=gen),
                                 weight=torch.randn(3, 4, generator=gen), bias=torch.randn(3, generator=gen))}
    cal = Calibration(meta={"fingerprint": "f"}, attn=stats(8), mlp=stats(16))
    set_alignment(cal, Alignment(prompt_set(), prompt_set(), gates, pruned=pruned, meta={"post_instruction_tokens": 2}))
    return cal


def test_pruned_gate_thresholds_round_trip_and_old_files_load_without_them(tmp_path):
    gen = torch.Generator().manual_seed(1)
    pruned = PrunedThresholds(ratios=(0.2, 0.3), dense_layers=3, max_fpr=0.01,
                              threshold={"direction": torch.randn(2, 3, generator=gen),
                                         "logistic": torch.randn(2, 3, generator=gen)})
    cal = _aligned(gen, pruned)
    path = tmp_path / "c.safetensors"
    save_calibration(cal, path)
    back = load_calibration(path)
    p = alignment(back).pruned
    assert p is not None and p.ratios == (0.2, 0.3) and p.dense_layers == 3 and p.max_fpr == 0.01
    for gate in ("direction", "logistic"):
        assert torch.equal(p.threshold[gate], pruned.threshold[gate]), gate
    assert torch.equal(p.find("logistic", 0.3 + 5e-7), pruned.threshold["logistic"][1])
    assert p.find("logistic", 0.31) is None and p.find("kl", 0.3) is None
    assert back.meta == cal.meta  # the thresholds' metadata is the section's, not the file's
    assert set(to_tensors(back)) == set(to_tensors(cal))

    # A file written before pruned thresholds existed: no keys, no metadata.
    old = _aligned(gen)
    save_calibration(old, tmp_path / "old.safetensors")
    assert not any("pruned" in k for k in to_tensors(old))
    back = load_calibration(tmp_path / "old.safetensors")
    assert alignment(back).pruned is None and set(alignment(back).gates) == {"direction", "logistic"}


def test_pruned_thresholds_without_their_metadata_are_refused(tmp_path):
    gen = torch.Generator().manual_seed(2)
    tensors = to_tensors(_aligned(gen))
    tensors["align.gate.direction.pruned_threshold"] = torch.zeros(2, 3)
    path = tmp_path / "c.safetensors"
    save_file(tensors, str(path), metadata={"aapp": json.dumps({"format": FORMAT})})
    with pytest.raises(CalibrationError, match="lacks align.gate_pruned"):
        alignment(load_calibration(path))
