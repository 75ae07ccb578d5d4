"""Prompts in, pruned generations out: the library behind `aapp prune`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from typing import TypeVar

from aapp.calibration.store import Calibration
from aapp.context import prompt_tokens
from aapp.generation import batched, generate_batch
from aapp.methods.base import Method, RowDecisions
from aapp.models.loading import LoadedModel
from aapp.pruning.engine import PrunedModel, PruneOptions, Reroute, prune_model
from aapp.provenance import versions
from aapp.pruning.flops import FlopCount

T = TypeVar("T")
PROVENANCE = "provenance"  # the row field that says what made the row (see run_provenance)


@dataclass(frozen=True)
class RowGroup:
    """Rows of a batch that generate together, under one router decision (None: no router)."""

    rows: list[int]
    decision: object = None
    recompute_flops: float = 0.0  # this group's share of a stopped prefill that it runs again
    info: list[dict] | None = None  # per row: what the router said of it


def group_rows(decided: RowDecisions, spent: float) -> list[RowGroup]:
    """A batch's rows grouped by decision, in order of first appearance; each group pays its rows'
    share of the `spent` FLOPs of the prefill the router stopped."""
    n = len(decided.decisions)
    order = list(dict.fromkeys(decided.decisions))
    return [RowGroup(rows, d, spent * len(rows) / n, [decided.info[i] for i in rows])
            for d in order for rows in [[i for i in range(n) if decided.decisions[i] == d]]]


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    batch_size: int = 8
    # Batch prompts of similar token length together: each batch is padded to its longest prompt.
    # 100 of the built-in jailbreaks (74 to 1,224 tokens, 51,944 in all) pad to 102,792 tokens in
    # batches of 8 as drawn and to 55,808 sorted. Sorting changes which prompts share a batch, and
    # so what a per-batch method decides for them.
    sort_by_length: bool = False


def run_provenance(loaded: LoadedModel, method: Method, options: PruneOptions, calib: Calibration | None,
                   settings: GenerationSettings) -> dict:
    """What made a run's rows, as plain JSON data: the model's identity, the method, ratio and every
    option it ran with, and the versions. The one place that decides what a row records of its run."""
    return {
        "model": {"name": loaded.name, "fingerprint": loaded.fingerprint},
        "method": method.name, "ratio": options.ratio,
        "options": {"prune": asdict(options), "method": method_options(method),
                    "generation": asdict(settings), "calibration": calib.digest() if calib is not None else None},
        "versions": versions(),
    }


def method_options(method: Method) -> dict:
    """A method's options dataclasses ({attribute: fields}), found by their `*Options` and `*Scoring` type names, so a
    method holding several (AAPP: its own and Probe Pruning's) records them all."""
    return {name: asdict(value) for name, value in sorted(vars(method).items())
            if is_dataclass(value) and not isinstance(value, type) and type(value).__name__.endswith(("Options", "Scoring"))}


def carries_state(method: Method, options: PruneOptions) -> bool:
    """Whether a batch's rows depend on the batches before it (a resumed run then replays them)."""
    return options.ema_momentum is not None or method.carries_state


def generate_rows(loaded: LoadedModel, prompts: Sequence, method: Method, options: PruneOptions,
                  calib: Calibration | None, settings: GenerationSettings = GenerationSettings(),
                  on_batch: Callable[[int], None] | None = None, start: int = 0) -> Iterator[dict]:
    """Yield one output row per prompt (aapp.prompts.Prompt objects), batch by batch.

    FLOPs and `latency_s` in a row are its share of its batch (batch total / batch
    size), so sums over rows are totals; `batch_latency_s` is the batch's wall time. Every
    row carries `run_provenance` under "provenance".

    The rows of the first `start` prompts are already written (a resumed run): they are not
    yielded, and a batch of only such prompts is not run unless the method carries state from
    batch to batch. Batches are formed over all prompts as in a run from the first, so the rows
    yielded are those that run would give.
    """
    prompts = list(prompts)
    order = list(range(len(prompts)))
    if settings.sort_by_length:
        lengths = [prompt_tokens(loaded.tokenizer, p.input) for p in prompts]
        order.sort(key=lengths.__getitem__)  # stable: equal lengths keep their input order
    done: dict[int, dict] = {}
    next_out = start
    replay = carries_state(method, options)
    provenance = run_provenance(loaded, method, options, calib, settings)
    handle = prune_model(loaded, method, options, calib)
    try:
        for indices in batched(order, settings.batch_size):
            if not replay and all(i < start for i in indices):
                continue
            chunk = [prompts[i] for i in indices]
            rows = dict(enumerate(run_batch(handle, chunk, settings)))
            done.update((indices[j], rows[j] | {PROVENANCE: provenance}) for j in range(len(chunk))
                        if indices[j] >= start)
            while next_out in done:  # rows leave in input order, as soon as that order allows
                yield done.pop(next_out)
                next_out += 1
            if on_batch:
                on_batch(sum(i >= start for i in indices))
    finally:
        handle.remove()


def run_groups(handle: PrunedModel, n: int, step: Callable[[RowGroup], T]) -> list[tuple[RowGroup, T]]:
    """`step` on one group of a batch's `n` rows, all of them; where a router splits the batch
    (engine.Reroute), `step` again on each group of rows it decided alike, under that decision.
    Each group carries its share of the stopped prefill (`recompute_flops`) for `step` to count."""
    try:
        whole = RowGroup(list(range(n)))
        return [(whole, step(whole))]
    except Reroute as stopped:
        parts = []
        for group in group_rows(stopped.decided, stopped.spent):
            with handle.running(group.decision):
                parts.append((group, step(group)))
        return parts


def group_flops(handle: PrunedModel, group: RowGroup) -> FlopCount:
    """What a group's rows cost: the forward the handle just recorded (it holds this group's batch
    only) and the group's share of a prefill the router stopped."""
    total = FlopCount()
    total.add(handle.record.flops)
    total.recompute += group.recompute_flops
    return total


def run_batch(handle: PrunedModel, chunk: Sequence, settings: GenerationSettings) -> list[dict]:
    """One batch's output rows, in its order. With a router, rows the router decides alike run on
    together; a batch it splits runs again group by group (run_groups), each row paying its share of
    the stopped prefill as `recompute` FLOPs."""
    parts = run_groups(handle, len(chunk), lambda group: _group_rows(handle, chunk, group, settings))
    rows = {i: row for group, group_rows_out in parts for i, row in zip(group.rows, group_rows_out)}
    return [rows[j] for j in range(len(chunk))]


def _group_rows(handle: PrunedModel, chunk: Sequence, group: RowGroup, settings: GenerationSettings) -> list[dict]:
    """Generate one group of a batch's rows (the whole batch, unless a router split it) into output rows."""
    loaded, method = handle.loaded, handle.method
    prompts = [chunk[i] for i in group.rows]
    out = generate_batch(loaded.model, loaded.tokenizer, [p.input for p in prompts],
                         max_new_tokens=settings.max_new_tokens)
    total = group_flops(handle, group)
    n = len(prompts)
    decided = group.info or (handle.decided.info if handle.decided is not None else None)
    share = {k: v / n for k, v in total.to_dict().items() if k != "fraction"}
    share["fraction"] = total.fraction
    kept = full_kept(loaded, handle.record.kept)
    info = method.row_info(n)
    rows = []
    for j, p in enumerate(prompts):
        row = {
            "id": p.id, "prompt": p.text, "label": p.label, "set": p.source, "completion": out.completions[j],
            "method": method.name, "ratio": handle.options.ratio,
            "flops": share, "kept": kept,
            "latency_s": (out.prefill_s + out.decode_s) / n, "batch_latency_s": out.prefill_s + out.decode_s,
            "prefill_s": out.prefill_s, "decode_s": out.decode_s,
            "prompt_tokens": out.prompt_tokens[j], "new_tokens": out.new_tokens[j],
        }
        if p.messages is not None:
            row["messages"] = [m.to_dict() for m in p.messages]
        if p.truncated:
            row["truncated_tokens"] = p.truncated
        row.update(method_facts(info[j], decided[j] if decided else None))
        rows.append(row)
    return rows


def method_facts(batch: dict, routed: dict | None) -> dict:
    """What the method says of a row's batch (Method.row_info), refined by what its router decided for
    the row: nested fields merge, plain ones are replaced."""
    out = dict(batch)
    for key, value in (routed or {}).items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def full_kept(loaded: LoadedModel, kept: list[dict]) -> dict:
    """Per-layer kept counts as three lists; dense layers show their full size."""
    g = loaded.geometry
    full = {"heads": g.num_heads, "kv_heads": g.num_kv_heads, "channels": g.intermediate_size}
    rows = [kept[i] if i < len(kept) and kept[i] else full for i in range(g.num_layers)]
    return {k: [r[k] for r in rows] for k in full}
