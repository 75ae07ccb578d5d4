"""AAPP's part of `aapp calibrate`: harmful and harmless passes, the gates fitted on them, and
thresholds refitted on pruned prefills; written to its own section of the file (store.py).

The step is registered with the method (`Registration.calibration`), and the calibration entry
point (aapp.pruning.calibrate) runs it after the general-text pass, handing it what only the
engine can run: Probe Pruning's prefill at a ratio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from aapp.calibration.run import TextSettings, pack_tokens
from aapp.calibration.store import Calibration
from aapp.console import warn
from aapp.errors import CalibrationError, InputError
from aapp.methods.aapp.gates import fit_gates
from aapp.methods.aapp.passes import WindowRecorder, collect_set, post_instruction_tokens, window_features
from aapp.methods.aapp.store import Alignment, alignment, has_alignment, set_alignment
from aapp.methods.aapp.thresholds import add_pruned_thresholds, fit_pruned_thresholds, parse_gate_ratios, plannable
from aapp.methods.registry import CalibrationStep, StepContext
from aapp.models.loading import LoadedModel
from aapp.prompts import Prompt, load_prompts

DEFAULT_HARMFUL, DEFAULT_HARMLESS = "calib-harmful", "calib-harmless"
# Mirrored pairs for the gates' routing cuts and the fitted gate's training (line i of one mirrors line i
# of the other); disjoint from every evaluation set, mirror-* included (tests/test_prompts.py).
DEFAULT_CONTRAST = ("contrast-harmful", "contrast-benign")


@dataclass(frozen=True)
class AlignmentSettings:
    """What AAPP's calibration reads: two prompt sets (None: the defaults, or with `update` the
    file's), and the ratios at which gate thresholds are refitted on pruned prefills at
    `dense_layers`, cut so that at most `gate_fpr` of the benign inputs fire (1: no cap).
    `contrast` names the mirrored harmful and benign sets, as "HARMFUL,BENIGN" or "none"."""

    harmful: str | None = None
    harmless: str | None = None
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    gate_ratios: tuple[float, ...] | str = ()  # or their text: "0.2,0.3", "none"
    dense_layers: int = 3
    gate_fpr: float = 0.01
    contrast: tuple[str, str] | str | None = DEFAULT_CONTRAST
    contrast_pairs: int | None = None  # the first N mirrored pairs (None: all; 0: none)

    def __post_init__(self):
        if isinstance(self.gate_ratios, str):
            object.__setattr__(self, "gate_ratios", parse_gate_ratios(self.gate_ratios))
        if isinstance(self.contrast, str):
            names = tuple(n.strip() for n in self.contrast.split(","))
            if self.contrast.strip().lower() == "none":
                names = None
            elif len(names) != 2 or not all(names):
                raise InputError(f"contrast takes two prompt sets, HARMFUL,BENIGN (or none), got {self.contrast!r}")
            object.__setattr__(self, "contrast", names)
        if self.contrast_pairs is not None and self.contrast_pairs < 0:
            raise InputError(f"contrast pairs must be at least 0, got {self.contrast_pairs}")

    @property
    def selection(self) -> dict:
        """How the harmful and harmless prompts were chosen from their sets, as the file records it."""
        return {"limit": self.limit, "sample": self.sample, "seed": self.seed}


@dataclass(frozen=True)
class Prepared:
    """The prompt sets, loaded before any model is."""

    settings: AlignmentSettings
    harmful: list[Prompt]
    harmless: list[Prompt]
    names: tuple[str, str]
    contrast: tuple[list[Prompt], list[Prompt]] | None = None
    recorded: dict = field(default_factory=dict)  # "text": the WindowRecorder of the general-text pass

    @contextmanager
    def observe_text(self, loaded: LoadedModel) -> Iterator[None]:
        """Watch the general-text pass (aapp.pruning.calibrate): its windows are the fitted gate's
        prose side, so their gate features are read there instead of in a second pass."""
        recorder = WindowRecorder(loaded, post_instruction_tokens(loaded.tokenizer))
        with recorder.recording():
            yield
        self.recorded["text"] = recorder


def prepare(settings: AlignmentSettings, existing: Calibration | None = None) -> Prepared:
    """Load the prompt sets (with `existing`, the file's own sets and prompts, unless named)."""
    harmful, harmless = settings.harmful, settings.harmless
    recorded = None
    if existing is not None:
        if not has_alignment(existing):
            raise CalibrationError("the calibration file has no alignment statistics to fit gate thresholds for; "
                                   "calibrate it with alignment statistics first")
        meta = alignment(existing).meta
        harmful, harmless = harmful or meta.get("harmful"), harmless or meta.get("harmless")
        if not harmful or not harmless:
            raise InputError("the calibration file does not name its prompt sets; name the harmful and harmless sets")
        if settings.limit is None and settings.sample is None:
            settings, recorded = _as_recorded(settings, meta)
    harmful, harmless = harmful or DEFAULT_HARMFUL, harmless or DEFAULT_HARMLESS
    load = dict(limit=settings.limit, sample=settings.sample, seed=settings.seed)
    sets = [load_prompts(harmful, **load), load_prompts(harmless, **load)]
    if recorded is not None:  # a file that records its counts but not how it chose them: the first N
        sets = [prompts[:n] if isinstance(n, int) and n < len(prompts) else prompts
                for prompts, n in zip(sets, recorded)]
    contrast = None
    if settings.contrast is not None and settings.contrast_pairs != 0:
        contrast = tuple(load_prompts(name) for name in settings.contrast)
        if len(contrast[0]) != len(contrast[1]):
            raise InputError(f"the contrast sets are mirrored pairs, line for line, but {settings.contrast[0]} has "
                             f"{len(contrast[0])} prompts and {settings.contrast[1]} {len(contrast[1])}")
        if settings.contrast_pairs is not None:
            contrast = tuple(side[: settings.contrast_pairs] for side in contrast)
    return Prepared(settings, sets[0], sets[1], (harmful, harmless), contrast)


def _as_recorded(settings: AlignmentSettings, meta: dict) -> tuple[AlignmentSettings, tuple | None]:
    """The settings an update takes its prompts with when none are given: the file's selection
    (limit, sample, seed), or, for a file that records only its counts, None and those counts."""
    selection = meta.get("selection")
    if isinstance(selection, dict):
        return replace(settings, **{k: selection.get(k) for k in ("limit", "sample")},
                       seed=int(selection.get("seed") or 0)), None
    counts = (meta.get("harmful_count"), meta.get("harmless_count"))
    if any(isinstance(n, int) for n in counts):
        warn(f"the file records {counts[0]} harmful + {counts[1]} harmless prompts but not how they were chosen "
             "(it predates the record); using the first of each set, as a limit does")
        return settings, counts
    return settings, None


def add_alignment(cal: Calibration, loaded: LoadedModel, harmful: Sequence[str], harmless: Sequence[str],
                  description: dict, batch_size: int = 8, on_batch: Callable[[int], None] | None = None,
                  prose: Sequence[str] = (), prose_settings: TextSettings = TextSettings(samples=32),
                  on_fit: Callable[[int, int], None] | None = None,
                  contrast: tuple[Sequence[str], Sequence[str]] | None = None,
                  recorded: WindowRecorder | None = None) -> None:
    """Add AAPP's alignment statistics and fitted gates to `cal` in place. `prose` (general text,
    cut into windows by `prose_settings`) joins the harmless side of the fitted gate, so that it
    learns not to fire on raw text. `contrast` (mirrored harmful and benign prompts, pair by pair)
    joins the fitted gate's training and every gate's routing cut. `on_fit(done, total)` follows the
    fitted gate's layers. `recorded`: a pass that already read the prose windows (their features
    are taken from it when its windows are these)."""
    if not harmful or not harmless:
        raise InputError("alignment calibration needs both harmful and harmless prompts")
    h = collect_set(loaded, list(harmful), batch_size, on_batch)
    s = collect_set(loaded, list(harmless), batch_size, on_batch)
    pairs = None
    if contrast is not None:
        pairs = tuple(collect_set(loaded, list(side), batch_size, on_batch).features for side in contrast)
    n_post = post_instruction_tokens(loaded.tokenizer)
    windows = None
    if prose:
        packed = pack_tokens(loaded.tokenizer, prose, prose_settings.samples, prose_settings.seq_len)
        windows = recorded.features_of(packed) if recorded is not None and recorded.n_post == n_post else None
        if windows is None:
            windows = window_features(loaded, packed, n_post, batch_size)
    if on_fit:
        on_fit(0, loaded.geometry.num_layers)  # the fit begins
    meta = dict(harmful=description.get("harmful"), harmless=description.get("harmless"),
                harmful_count=len(harmful), harmless_count=len(harmless),
                post_instruction_tokens=n_post, gate_prose_windows=0 if windows is None else len(windows),
                contrast=description.get("contrast"), contrast_pairs=0 if pairs is None else len(pairs[0]),
                selection=description.get("selection"))
    set_alignment(cal, Alignment(harmful=h.stats, harmless=s.stats, gates=fit_gates(h, s, windows, on_fit, pairs),
                                 meta=meta))


def run(ctx: StepContext, prepared: Prepared) -> str:
    """The alignment statistics, fitted gates and any pruned thresholds, added to `ctx.calib`;
    returns what it did, for the summary line."""
    pairs = prepared.contrast
    task = ctx.bar.add_task("harmful/harmless", total=len(prepared.harmful) + len(prepared.harmless)
                            + (2 * len(pairs[0]) if pairs else 0))
    names = dict(zip(("harmful", "harmless"), prepared.names), selection=prepared.settings.selection)
    if pairs:
        names["contrast"] = ",".join(prepared.settings.contrast)
    fit = ctx.bar.add_task("logistic gate fit, layers", total=None, start=False)

    def on_fit(done: int, total: int) -> None:
        ctx.bar.start_task(fit)  # its clock starts with the fit, not with the passes
        ctx.bar.update(fit, completed=done, total=total)

    add_alignment(ctx.calib, ctx.loaded, [p.input for p in prepared.harmful], [p.input for p in prepared.harmless],
                  names, on_batch=lambda n: ctx.bar.advance(task, n), prose=ctx.prose, prose_settings=ctx.text,
                  on_fit=on_fit,
                  contrast=tuple([p.input for p in side] for side in pairs) if pairs else None,
                  recorded=prepared.recorded.get("text"))
    prose = _prose_windows(ctx.loaded, ctx.prose, ctx.text.samples, ctx.text.seq_len)
    ratios = _thresholds(ctx, prepared, prose)
    return (f"{len(prepared.harmful)} harmful + {len(prepared.harmless)} harmless prompts"
            + (f", {len(pairs[0])} contrast pairs" if pairs else "")
            + (f", gate thresholds at ratios {','.join(f'{r:g}' for r in ratios)}" if ratios else ""))


def update(ctx: StepContext, prepared: Prepared) -> str:
    """Pruned gate thresholds at the settings' ratios, added to the file's (the rest is kept)."""
    s = prepared.settings
    if not s.gate_ratios:
        raise InputError("an update adds gate thresholds at the given gate ratios; give at least one ratio")
    a = alignment(ctx.calib)
    counts = (a.meta.get("harmful_count"), a.meta.get("harmless_count"))
    if counts != (len(prepared.harmful), len(prepared.harmless)):
        warn(f"the file's gates were fitted on {counts[0]} harmful + {counts[1]} harmless prompts, these thresholds "
             f"on {len(prepared.harmful)} + {len(prepared.harmless)}; pass the limit/sample/seed it was made with")
    if a.pruned is not None and a.pruned.dense_layers != s.dense_layers:
        warn(f"replacing the gate thresholds fitted with {a.pruned.dense_layers} dense layers "
             f"(ratios {','.join(f'{r:g}' for r in a.pruned.ratios)})")
    prose = None
    if a.meta.get("gate_prose_windows"):  # the fitted gate learnt prose as benign: its cut must too
        from aapp.text import load_text

        meta = ctx.calib.meta
        prose = _prose_windows(ctx.loaded, load_text(meta["text"], split="calib"), int(a.meta["gate_prose_windows"]),
                               int(meta["seq_len"]))
    if not _thresholds(ctx, prepared, prose):
        raise InputError("no gate ratio can be pruned on this model; nothing to add")
    p = alignment(ctx.calib).pruned
    return f"gate thresholds at ratios {','.join(f'{r:g}' for r in p.ratios)} ({p.dense_layers} dense layers)"


def _thresholds(ctx: StepContext, prepared: Prepared, prose) -> list[float]:
    """Refit the gate thresholds at every ratio this model can be pruned to; the ratios fitted."""
    s = prepared.settings
    ratios, skipped = plannable(ctx.loaded.geometry, s.gate_ratios, s.dense_layers)
    for why in skipped:
        warn(f"gate ratio skipped, as the engine could not run it: {why}")
    if not ratios:
        return []
    task = ctx.bar.add_task("pruned gate thresholds", total=len(ratios) * (len(prepared.harmful) + len(prepared.harmless)))
    add_pruned_thresholds(ctx.calib, fit_pruned_thresholds(
        ctx.loaded, alignment(ctx.calib), [p.input for p in prepared.harmful], [p.input for p in prepared.harmless],
        ratios, ctx.prefill, s.dense_layers, on_batch=lambda n: ctx.bar.advance(task, n), prose=prose,
        max_fpr=None if s.gate_fpr >= 1 else s.gate_fpr))
    return ratios


def _prose_windows(loaded: LoadedModel, texts: Sequence[str], samples: int, seq_len: int):
    """The general-text windows the fitted gate learns not to fire on (as add_alignment packs them)."""
    return pack_tokens(loaded.tokenizer, texts, samples, seq_len) if samples and texts else None


STEP = CalibrationStep("align", AlignmentSettings, prepare, run, update)
