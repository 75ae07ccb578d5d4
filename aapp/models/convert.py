"""Convert a verified GGUF once into a float32 safetensors transformers directory.

The directory is built by `aapp.io.atomic_dir` and ends with the marker that
`aapp.models.verify` checks; the saved model is reloaded and compared bit for bit with the
GGUF before it is put in place.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from aapp.errors import ModelError
from aapp.io import atomic_dir
from aapp.models.reporter import Reporter
from aapp.models.spec import ModelSpec
from aapp.models.verify import MARKER, MARKER_FORMAT, sha256_file


def convert(spec: ModelSpec, gguf: Path, dest: Path, report: Reporter | None = None) -> None:
    """Dequantise `gguf` to float32 and save it as a transformers directory at `dest`, atomically.

    float32 holds every dequantised GGUF value exactly, so the converted model computes the
    same logits as loading the GGUF itself, only without minutes of dequantisation per load.
    """
    import gguf as gguf_lib
    import safetensors
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    report = report or Reporter(spec, enabled=False)
    report.open_ended("converting to float32 safetensors")
    # check=None: whatever an earlier, incomplete or forced-out conversion left at `dest` is ours to replace.
    with atomic_dir(dest, check=None) as staged:
        with _no_progress_bars():
            try:
                model = AutoModelForCausalLM.from_pretrained(
                    gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                    quantization_config=GgufConfig(dequantize=True),
                )
                tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            except (OSError, ValueError, KeyError) as e:
                raise ModelError(f"cannot convert {gguf.name}: {_first_line(e)}") from None
            if model.config.model_type != spec.architecture:
                raise ModelError(f"{gguf.name} is a {model.config.model_type} model, "
                                 f"the registry says {spec.architecture}")
            _drop_quantization(model)
            _eos_from_model(tokenizer, model)
            model.save_pretrained(staged)
            tokenizer.save_pretrained(staged)
            _check_reload(model, tokenizer, staged)
        del model
        if not any(staged.glob("*.safetensors")):
            raise ModelError(f"converting {spec.alias} wrote no safetensors file")
        files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(staged.iterdir()) if p.is_file()}
        marker = {
            "format": MARKER_FORMAT, "alias": spec.alias, "dtype": "float32",
            "gguf_name": spec.gguf_name, "gguf_size": spec.gguf_size, "gguf_sha256": spec.gguf_sha256,
            "packages": [f"{p.package}=={p.version}" for p in spec.parts],
            "converted_with": {"transformers": transformers.__version__, "torch": torch.__version__,
                               "gguf": _version_of(gguf_lib), "safetensors": safetensors.__version__},
            "files": files,
        }
        (staged / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    report.finish()


def _eos_from_model(tokenizer, model) -> None:
    """The GGUF's own end-of-sequence token, which some transformers releases (5.17) read into the
    model config but not into a "gpt2"-style tokenizer, which then ends on <|endoftext|>."""
    eos = model.config.eos_token_id
    if isinstance(eos, int) and tokenizer.eos_token_id != eos:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)


# Plain, accented, CJK, emoji and odd whitespace, all in NFC: for qwen2, transformers reloads a
# saved tokenizer as its Qwen2Tokenizer class, which NFC-normalises input like the official Qwen
# tokenizer.json does, while the tokenizer it builds from a GGUF does not. They differ only on
# decomposed text (e + U+0301 instead of é).
_PROBE_TEXTS = ("The quick brown fox jumps", "naïve café — 日本語 🙂\n\tx  ")


def _check_reload(model, tokenizer, staged: Path) -> None:
    """The saved directory, loaded as any user would, must give the GGUF model's tokens and logits bit for bit."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded_tok = AutoTokenizer.from_pretrained(staged)
    for text in _PROBE_TEXTS:
        if tokenizer(text).input_ids != reloaded_tok(text).input_ids:
            raise ModelError(f"the converted tokenizer splits {text!r} differently from the GGUF's; not caching it")
    if tokenizer.chat_template != reloaded_tok.chat_template:
        raise ModelError("the converted tokenizer lost the GGUF's chat template; not caching it")
    reloaded = AutoModelForCausalLM.from_pretrained(staged, dtype=torch.float32, use_safetensors=True)
    ids = tokenizer(_PROBE_TEXTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        expected, actual = model.eval()(ids).logits, reloaded.eval()(ids).logits
    if not torch.equal(expected, actual):
        diff = (expected - actual).abs().max().item()
        raise ModelError(f"the converted model's logits differ from the GGUF's (max {diff:.3g}); not caching it")


def _drop_quantization(model) -> None:
    """Forget the GGUF origin so the saved config describes a plain float32 checkpoint."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for obj in (model, model.config):
        if getattr(obj, "quantization_config", None) is not None:
            try:
                delattr(obj, "quantization_config")
            except AttributeError:
                obj.quantization_config = None
    if hasattr(model, "is_quantized"):
        with contextlib.suppress(AttributeError):
            model.is_quantized = False


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Hide transformers' loading bars; our progress line says what is happening. Its warnings still show."""
    from transformers.utils import logging as hf_logging

    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()


def _version_of(module) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module.__name__)
    except PackageNotFoundError:
        return "unknown"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
