import json

import pytest
from safetensors.torch import save_file
import torch

from aapp.calibration.collect import counted_tokens
from aapp.calibration.run import TextSettings, calibrate_text, pack_tokens
from aapp.calibration.store import FORMAT, Calibration, SiteStats, load_calibration, save_calibration
from aapp.errors import CalibrationError, InputError

TEXT = ["It was a bright cold day in April, and the clocks were striking thirteen. " * 8] * 4


def test_calibrate_writes_history_that_matches_hooks(tiny_llama, tmp_path):
    cal = calibrate_text(tiny_llama, TEXT, TextSettings(samples=3, seq_len=32, batch_size=2), "test text")
    g = tiny_llama.geometry
    assert cal.attn.sq_mean.shape == (g.num_layers, g.num_heads * g.head_dim)
    assert cal.mlp.sq_mean.shape == (g.num_layers, g.intermediate_size)
    # Recompute layer 1's down_proj input statistic directly.
    windows = pack_tokens(tiny_llama.tokenizer, TEXT, 3, 32)
    seen = []
    p = tiny_llama.adapter.layer_parts(tiny_llama.model, 1)
    h = p.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        tiny_llama.model(input_ids=windows, use_cache=False)
    h.remove()
    x = torch.cat(seen)
    torch.testing.assert_close(cal.mlp.sq_mean[1], x.square().mean(0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cal.mlp.mean[1], x.mean(0), rtol=1e-4, atol=1e-5)
    assert cal.meta["fingerprint"] == tiny_llama.fingerprint and cal.meta["samples"] == 3

    path = tmp_path / "c.safetensors"
    save_calibration(cal, path)
    back = load_calibration(path)
    assert back.meta["fingerprint"] == cal.meta["fingerprint"]
    assert torch.equal(back.attn.sq_mean, cal.attn.sq_mean) and back.alignment is None


def test_fingerprint_mismatch_is_a_clear_error(tiny_llama):
    empty = SiteStats(torch.zeros(1, 1), torch.zeros(1, 1))
    cal = Calibration(meta={"fingerprint": "0000", "model": "other"}, attn=empty, mlp=empty)
    with pytest.raises(CalibrationError, match="made for model 'other'"):
        cal.check_model(tiny_llama.fingerprint, tiny_llama.name)


def test_bad_files(tmp_path):
    with pytest.raises(CalibrationError, match="no such"):
        load_calibration(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CalibrationError, match="not a readable"):
        load_calibration(junk)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(CalibrationError, match="not an aapp calibration"):
        load_calibration(other)


@pytest.mark.parametrize("missing", ["attn.sq_mean", "mlp.sq_mean", "attn.mean", "mlp.mean"])
def test_a_calibration_without_a_statistic_is_refused(tmp_path, missing):
    tensors = {k: torch.zeros(2, 4) for k in ("attn.sq_mean", "mlp.sq_mean", "attn.mean", "mlp.mean")}
    del tensors[missing]
    path = tmp_path / "c.safetensors"
    meta = {"aapp": json.dumps({"format": FORMAT, "fingerprint": "0000"})}
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CalibrationError, match=f"missing tensor {missing}"):
        load_calibration(path)


def test_too_little_text():
    from aapp.models.synthetic import tiny_tokenizer

    with pytest.raises(InputError, match="fewer than one window"):
        pack_tokens(tiny_tokenizer(), ["short"], 4, 512)


def test_counted_tokens_last_n_with_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert counted_tokens(mask, "last:2").int().tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 1, 1]]
    assert torch.equal(counted_tokens(mask, "all"), mask)


def test_alignment_round_trips_through_the_file(tmp_path):
    from aapp.calibration.store import to_tensors

    cal = _aligned(torch.Generator().manual_seed(0))
    path = tmp_path / "c.safetensors"
    save_calibration(cal, path)
    back = load_calibration(path)
    assert back.alignment is not None and set(back.alignment.gates) == {"direction", "logistic"}
    assert back.alignment.gates["direction"].weight is None and back.alignment.gates["logistic"].weight.shape == (3, 4)
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
    with pytest.raises(CalibrationError, match="missing tensor align.attn.harmful.sq_mean"):
        load_calibration(path)


def _aligned(gen, pruned=None):
    from aapp.calibration.store import Alignment, GateFit, PromptSetStats

    def stats(c):
        return SiteStats(torch.randn(3, c, generator=gen), torch.rand(3, c, generator=gen))

    def prompt_set():
        return PromptSetStats(attn=stats(8), mlp=stats(16), resid=stats(4))

    gates = {"direction": GateFit(torch.rand(3, generator=gen), torch.randn(3, generator=gen)),
             "logistic": GateFit(torch.rand(3, generator=gen), torch.randn(3, generator=gen),
                                 weight=torch.randn(3, 4, generator=gen), bias=torch.randn(3, generator=gen))}
    return Calibration(meta={"fingerprint": "f", "post_instruction_tokens": 2}, attn=stats(8), mlp=stats(16),
                       alignment=Alignment(prompt_set(), prompt_set(), gates, pruned=pruned))


def test_pruned_gate_thresholds_round_trip_and_old_files_load_without_them(tmp_path):
    from aapp.calibration.store import PrunedThresholds, to_tensors

    gen = torch.Generator().manual_seed(1)
    pruned = PrunedThresholds(ratios=(0.2, 0.3), dense_layers=3, max_fpr=0.01,
                              threshold={"direction": torch.randn(2, 3, generator=gen),
                                         "logistic": torch.randn(2, 3, generator=gen)})
    cal = _aligned(gen, pruned)
    path = tmp_path / "c.safetensors"
    save_calibration(cal, path)
    back = load_calibration(path)
    p = back.alignment.pruned
    assert p is not None and p.ratios == (0.2, 0.3) and p.dense_layers == 3 and p.max_fpr == 0.01
    for gate in ("direction", "logistic"):
        assert torch.equal(p.threshold[gate], pruned.threshold[gate]), gate
    assert torch.equal(p.find("logistic", 0.3 + 5e-7), pruned.threshold["logistic"][1])
    assert p.find("logistic", 0.31) is None and p.find("kl", 0.3) is None
    assert back.meta == {"format": FORMAT, **cal.meta}  # the typed object holds the thresholds' metadata, not meta
    assert set(to_tensors(back)) == set(to_tensors(cal))

    # A file written before pruned thresholds existed: no keys, no metadata.
    old = _aligned(gen)
    save_calibration(old, tmp_path / "old.safetensors")
    assert not any("pruned" in k for k in to_tensors(old))
    back = load_calibration(tmp_path / "old.safetensors")
    assert back.alignment.pruned is None and set(back.alignment.gates) == {"direction", "logistic"}


def test_pruned_thresholds_without_their_metadata_are_refused(tmp_path):
    from aapp.calibration.store import to_tensors

    gen = torch.Generator().manual_seed(2)
    tensors = to_tensors(_aligned(gen))
    tensors["align.gate.direction.pruned_threshold"] = torch.zeros(2, 3)
    path = tmp_path / "c.safetensors"
    save_file(tensors, str(path), metadata={"aapp": json.dumps({"format": FORMAT})})
    with pytest.raises(CalibrationError, match="missing tensor gate_pruned"):
        load_calibration(path)


def _overwrite_tensor_bytes(path, byte: int = 0xFF) -> None:
    """Every tensor byte of a safetensors file set to `byte` (0xFF: each float32 reads as NaN); the header kept."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start:] = bytes([byte]) * (len(data) - start)
    path.write_bytes(bytes(data))


def test_a_file_with_damaged_tensor_bytes_is_refused(tiny_llama, tmp_path):
    cal = calibrate_text(tiny_llama, TEXT, TextSettings(samples=2, seq_len=16, batch_size=2), "test text")
    path = tmp_path / "c.safetensors"
    save_calibration(cal, path)
    _overwrite_tensor_bytes(path)
    with pytest.raises(CalibrationError, match=r"tensor attn\.mean holds non-finite values") as e:
        load_calibration(path)
    assert "\n" not in str(e.value)


def test_an_auroc_may_be_undefined_but_not_out_of_range(tmp_path):
    from aapp.calibration.store import _check_values

    _check_values(tmp_path, "align.gate.kl.auroc", torch.tensor([float("nan"), 0.7]))  # an empty prompt set
    with pytest.raises(CalibrationError, match="outside"):
        _check_values(tmp_path, "align.gate.kl.auroc", torch.tensor([1.5]))
    with pytest.raises(CalibrationError, match="non-finite"):
        _check_values(tmp_path, "align.gate.kl.threshold", torch.tensor([float("nan")]))


def test_shapes_another_model_needs_are_refused(tiny_llama):
    g = tiny_llama.geometry
    ok = SiteStats(torch.zeros(g.num_layers, g.num_heads * g.head_dim), torch.zeros(g.num_layers, g.num_heads * g.head_dim))
    short = SiteStats(torch.zeros(g.num_layers - 1, g.intermediate_size), torch.zeros(g.num_layers - 1, g.intermediate_size))
    cal = Calibration(meta={"fingerprint": tiny_llama.fingerprint, "model": "x"}, attn=ok, mlp=short)
    cal.check_model(tiny_llama.fingerprint, tiny_llama.name)  # without the geometry only the identity is checked
    with pytest.raises(CalibrationError, match=rf"tensor mlp\.mean has shape \[{g.num_layers - 1}, "):
        cal.check_model(tiny_llama.fingerprint, tiny_llama.name, g)
