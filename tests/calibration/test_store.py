import json
import re

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
    assert torch.equal(back.attn.sq_mean, cal.attn.sq_mean) and back.sections == {}


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


def test_sections_round_trip_as_their_owner_wrote_them(tmp_path):
    from aapp.calibration.store import Section, to_tensors

    cal = Calibration(meta={"fingerprint": "f"}, attn=SiteStats(torch.zeros(2, 3), torch.ones(2, 3)),
                      mlp=SiteStats(torch.zeros(2, 5), torch.ones(2, 5)),
                      sections={"mine": Section({"a.b": torch.arange(4.0), "c": torch.ones(2)}, {"k": [1, "x"]})})
    save_calibration(cal, tmp_path / "c.safetensors")
    back = load_calibration(tmp_path / "c.safetensors")
    assert set(to_tensors(back)) == {"attn.mean", "attn.sq_mean", "mlp.mean", "mlp.sq_mean", "mine.a.b", "mine.c"}
    assert torch.equal(back.sections["mine"].tensors["a.b"], torch.arange(4.0)) and back.sections["mine"].meta == {"k": [1, "x"]}
    assert back.meta == {"fingerprint": "f"}


def test_an_unknown_format_asks_to_recalibrate(tmp_path):
    tensors = {k: torch.zeros(2, 4) for k in ("attn.sq_mean", "mlp.sq_mean", "attn.mean", "mlp.mean")}
    path = tmp_path / "c.safetensors"
    save_file(tensors, str(path), metadata={"aapp": json.dumps({"format": "aapp-calibration/9"})})
    with pytest.raises(CalibrationError, match="unsupported calibration format .*run `aapp calibrate` again"):
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


def test_a_negative_mean_of_squares_is_refused(tmp_path):
    """Only NaN and inf were checked: a negative sq_mean (damaged bytes that still read as numbers) was accepted."""
    from aapp.calibration.store import _check_values

    _check_values(tmp_path, "mlp.sq_mean", torch.tensor([0.0, 2.0]))
    _check_values(tmp_path, "mlp.mean", torch.tensor([-1.0]))  # a mean may be negative
    for name in ("mlp.sq_mean", "attn.sq_mean", "align.harmful.sq_mean"):
        with pytest.raises(CalibrationError, match=rf"tensor {re.escape(name)} holds negative values") as e:
            _check_values(tmp_path, name, torch.tensor([1.0, -0.5]))
        assert "\n" not in str(e.value)


def test_shapes_another_model_needs_are_refused(tiny_llama):
    g = tiny_llama.geometry
    ok = SiteStats(torch.zeros(g.num_layers, g.num_heads * g.head_dim), torch.zeros(g.num_layers, g.num_heads * g.head_dim))
    short = SiteStats(torch.zeros(g.num_layers - 1, g.intermediate_size), torch.zeros(g.num_layers - 1, g.intermediate_size))
    cal = Calibration(meta={"fingerprint": tiny_llama.fingerprint, "model": "x"}, attn=ok, mlp=short)
    cal.check_model(tiny_llama.fingerprint, tiny_llama.name)  # without the geometry only the identity is checked
    with pytest.raises(CalibrationError, match=rf"tensor mlp\.mean has shape \[{g.num_layers - 1}, "):
        cal.check_model(tiny_llama.fingerprint, tiny_llama.name, g)
