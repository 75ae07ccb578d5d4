"""Wrap a loaded model so that its own forward (and `generate()`) runs pruned.

    handle = prune_model(loaded, make_method("pp"), PruneOptions(ratio=0.3), calib)
    loaded.model.generate(...)      # pruned, per batch
    handle.remove()                 # the original modules and no hooks: exactly dense again

Per batch, at prefill, a forward pre-hook on each pruned decoder layer probes the
block input, asks the method for this layer's kept heads and channels, and prepares
the kept-weight linears; the swapped attention/MLP modules then run only those. The
mask is kept for the decode steps of the same batch (the KV cache holds only kept
heads); `reprobe_every` re-selects MLP channels, which carry no state, during decode.

With `prefill="dense"` the prefill is the probe: every layer runs its original modules over the
whole prompt (the KV cache then holds every head, and the pruned attention later reads its kept
heads from it), hooks on o_proj and down_proj keep each row's mean squared inputs, and at the first
decode step (or after `dense_tokens` more) each row's heads and channels are chosen from its own
activations, scored as the method scores a probe. Each row is a batch of its own to the method, a
router decides each row where it reads and never stops the prefill, and decode runs the union of the
rows' selections with each row's own structures (aapp.pruning.forward.LayerRuntime.set_row_masks).

A method with a router (Method.router) is asked for each row's `Route` inline, when the prefill
reaches the router's layer. Rows decided alike run on under their route (its ratio's budgets, or
dense); otherwise the forward stops there, and `run_routed` runs the batch's rows again, group by
group, each under its route, each paying its share of the stopped prefill. The stop never leaves
this module: `run_routed` returns each group's result and row reports as values.

Each forward's per-batch facts (the method's `Batch`, the FLOPs, the kept counts) live in one
`_BatchRun`, made at prefill and replaced at the next.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from aapp.calibration.store import Calibration
from aapp.errors import AappError
from aapp.methods.base import Batch, LayerContext, Method, ProbeStats, Route, RowDecisions
from aapp.methods.masks import LayerMask
from aapp.methods.report import DecodeBytes, FlopCount, KeptCounts, PhaseFlops, RowReport
from aapp.methods.engine_options import PruneOptions
from aapp.methods.plan import PrunePlan, make_plan
from aapp.models.kv_cache import cache_in
from aapp.models.loading import LoadedModel
from aapp.pruning import flops
from aapp.pruning.forward import LayerRuntime, PrunedAttention, PrunedMLP
from aapp.pruning.probe import choose_probe, mlp_probe, run_probe


T = TypeVar("T")


@dataclass
class _BatchRun:
    """One forward of a batch (or routed group): what the method sees of it, and what the engine did."""

    batch: Batch
    shape: tuple[int, int]                                     # prefill [batch, prompt tokens]
    token_mask: torch.Tensor                                   # [B, S] of the current chunk
    kept: list[dict] = field(default_factory=list)             # per layer: heads, kv_heads, channels
    flops: PhaseFlops = field(default_factory=PhaseFlops)
    decode_bytes: DecodeBytes = field(default_factory=DecodeBytes)
    routed: RowDecisions | None = None                         # the router's inline decisions, where it agreed
    prefix: dict[int, float] = field(default_factory=dict)     # each pruned layer's prefill FLOPs, as it ran
    decode_steps: dict[int, int] = field(default_factory=dict)
    last_probe: dict[int, ProbeStats | None] = field(default_factory=dict)
    # prefill=dense: each row is its own batch to the method; its prefill's activations choose its channels.
    rows: list[Batch] | None = None
    prefilling: bool = True
    prefill_tokens: torch.Tensor | None = None  # [B] each row's prompt tokens (non-pad)
    stats: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # layer -> site -> [B, width]
    row_kept: list[list[dict]] = field(default_factory=list)  # per row, per layer (as `kept`)


@dataclass(frozen=True)
class BatchRecord:
    """What the engine did for the latest forward (a batch, or a routed group of its rows)."""

    kept: list[dict]     # per layer: heads, kv_heads, channels ({} where the layer ran whole)
    flops: FlopCount     # in all
    phases: PhaseFlops   # by phase


class _Stopped(Exception):
    """The router's rows differ (or need the layers before its own run otherwise): `run_routed` runs
    them again by group. `spent` is what the stopped prefill cost (its layers before the router's, and
    its probes). Raised from a layer hook inside the model's forward and caught by `run_routed` alone."""

    def __init__(self, decided: RowDecisions, spent: float):
        super().__init__("rows routed apart")
        self.decided, self.spent = decided, spent


@dataclass(frozen=True)
class RowGroup:
    """Rows of a batch that generate together, under one router decision (None: no router)."""

    rows: list[int]
    decision: object = None
    recompute_flops: float = 0.0  # this group's share of a stopped prefill that it runs again
    routed: tuple = ()            # per row: the router's facts of it


@dataclass(frozen=True)
class GroupRun(Generic[T]):
    """A group's rows run: what the step returned, and each row's report (in the group's order)."""

    group: RowGroup
    result: T
    reports: list[RowReport]


class PrunedModel:
    """The handle of a pruned model. Use as a context manager or call `remove()`."""

    def __init__(self, loaded: LoadedModel, method: Method, options: PruneOptions, calib: Calibration | None):
        from aapp_kernels.backend import get_backend

        self.loaded, self.method, self.options, self.calib = loaded, method, options, calib
        g = loaded.geometry
        self.plan: PrunePlan = make_plan(g, options.ratio, dense_layers=options.dense_layers,
                                         prefill_dense=options.prefill == "dense",
                                         channel_multiple=options.channel_multiple)
        method.check_calibration(calib)
        if calib is not None:
            calib.check_model(loaded.fingerprint, loaded.name, loaded.geometry)
        self.history = None
        if calib is not None:
            dev = loaded.device
            self.history = {s: calib.site(s).sq_mean.to(dev).clone() for s in ("attn", "mlp")}
        self.backend = get_backend(options.backend, loaded.device)
        method.bind(loaded.model, loaded.adapter, g, self.plan, calib)
        self.router = method.router()
        self._group: RowGroup | None = None  # the routed group `run_routed` is running now (None: a whole batch)
        self.run: _BatchRun | None = None   # the current forward's batch
        self._plans: dict[float, PrunePlan] = {}
        self._fixed_step_bytes: float | None = None  # a decode step's reads of dense layers and lm_head
        self._handles, self._swapped, self._undo = [], [], []
        self.runtimes: dict[int, LayerRuntime] = {}
        model = loaded.model
        self._handles.append(model.register_forward_pre_hook(self._on_model_input, with_kwargs=True))
        watched = method.watch_layers() | ({self.router.layer} if self.router is not None else set())
        for i in range(g.num_layers):
            parts = loaded.adapter.layer_parts(model, i)
            if not self.plan.is_dense(i, g):
                rt = LayerRuntime(index=i, parts=parts, geometry=g, backend=self.backend)
                if options.ema_momentum is not None and self.history is not None:
                    rt.observe = self._ema_observer(i)
                if method.uses_probe and options.reprobe_every:
                    rt.reselect = self._mlp_reprobe(i)
                self.runtimes[i] = rt
                # down_proj's kept input channels are gathered one by one (o_proj's come in whole heads).
                self._undo.append(self.backend.prepare_layer(gathered_inputs=[parts.down_proj]))
                self._swap(parts.layer, "self_attn", PrunedAttention(rt, parts.attn))
                self._swap(parts.layer, "mlp", PrunedMLP(rt, parts.mlp))
                if options.prefill == "dense":  # the unpruned prefill's inputs to o_proj and down_proj, per row
                    for site, linear in (("attn", parts.o_proj), ("mlp", parts.down_proj)):
                        self._handles.append(linear.register_forward_pre_hook(self._capture(i, site)))
            if i in self.runtimes or i in watched:
                self._handles.append(parts.layer.register_forward_pre_hook(self._layer_hook(i, i in watched),
                                                                           with_kwargs=True))

    # -- lifecycle -------------------------------------------------------------------------
    def _swap(self, parent, name, new):
        self._swapped.append((parent, name, getattr(parent, name)))
        setattr(parent, name, new)

    def remove(self) -> None:
        """Restore the original modules (and weight layouts) and drop every hook."""
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        for h in self._handles:
            h.remove()
        for parent, name, original in reversed(self._swapped):
            setattr(parent, name, original)
        self._handles.clear()
        self._swapped.clear()
        self.runtimes.clear()

    def __enter__(self):
        return self

    def plan_for(self, decision) -> PrunePlan | None:
        """The plan rows run under: a `Route`'s ratio (None: this handle's plan; 0: dense, None returned)."""
        ratio = decision.ratio if isinstance(decision, Route) else None
        if ratio is None:
            return self.plan
        if ratio == 0:
            return None
        if ratio not in self._plans:
            o = self.options
            self._plans[ratio] = make_plan(self.loaded.geometry, ratio, dense_layers=o.dense_layers,
                                           prefill_dense=o.prefill == "dense",
                                           channel_multiple=o.channel_multiple)
        return self._plans[ratio]

    def __exit__(self, *exc):
        self.remove()

    # -- hooks -----------------------------------------------------------------------------
    def _on_model_input(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"][..., 0]
        mask = kwargs.get("attention_mask")
        if mask is None or mask.dim() != 2:
            mask = torch.ones(ids.shape[:2], dtype=torch.bool, device=ids.device)
        # The 2-D mask covers cached tokens too; the current chunk is its tail.
        token_mask = mask[:, -ids.shape[1]:].bool()
        cache = cache_in(kwargs)
        past = cache.get_seq_length() if cache is not None else 0
        keep = kwargs.get("logits_to_keep", 0) or ids.shape[1]
        lm = flops.lm_head_flops(self.loaded.geometry, ids.shape[0] * min(keep, ids.shape[1]))
        if past == 0:
            group = self._group
            batch = Batch(decision=group.decision if group else None, routed=group.routed if group else (),
                          state=self.method.new_state())
            self.run = _BatchRun(batch, (ids.shape[0], ids.shape[1]), token_mask)
            self.run.decode_bytes.element_bytes = self.loaded.model.dtype.itemsize
            if self.options.prefill == "dense":
                self.run.rows = [Batch(state=self.method.new_state()) for _ in range(ids.shape[0])]
                self.run.prefill_tokens = token_mask.sum(1)
            if group is not None:
                self.run.flops.add(FlopCount(recompute=group.recompute_flops), prefill=True)
        self.run.token_mask = token_mask
        self.run.prefilling = past == 0
        self.run.flops.add(self._dense_only_flops(ids.shape[0], ids.shape[1], past, lm), prefill=past == 0)
        if past:
            self._count_dense_bytes(ids.shape[0], past + ids.shape[1])

    def _count_dense_bytes(self, rows: int, context: int) -> None:
        """A decode step's reads outside the pruned layers: the dense layers, their KV caches and lm_head."""
        g, b = self.loaded.geometry, self.run.decode_bytes
        size = self.loaded.model.dtype.itemsize
        dense = [i for i in range(g.num_layers) if i not in self.runtimes]
        if self._fixed_step_bytes is None:  # the same every step: computed once
            self._fixed_step_bytes = (len(dense) * flops.block_weight_bytes(
                g, g.num_heads, g.num_kv_heads, g.intermediate_size, size) + flops.lm_head_bytes(g, size))
        b.weights += self._fixed_step_bytes
        b.kv += sum(flops.kv_read_bytes(g, g.num_kv_heads, rows, _window(g, i, context), size) for i in dense)
        b.tokens += rows

    def _dense_only_flops(self, batch: int, seq: int, past: int, lm: float) -> FlopCount:
        """Dense layers and lm_head cost the same pruned or not; pruned layers are added by their hooks."""
        g = self.loaded.geometry
        ctx = past + (seq + 1) / 2
        per_block = flops.dense_block_flops(g, batch * seq, ctx)
        dense_layers = g.num_layers - len(self.runtimes)
        return FlopCount(dense=per_block * g.num_layers + lm, pruned=per_block * dense_layers + lm)

    def _layer_hook(self, i: int, watched: bool):
        def hook(layer, args, kwargs):
            x = kwargs.get("hidden_states", args[0] if args else None)
            cache = cache_in(kwargs)
            past = cache.get_seq_length(i) if cache is not None else 0
            if past == 0 and watched and self.run.rows is not None:
                self._observe_rows(i, x)
            elif past == 0 and watched:
                self.method.observe(i, x, self.run.token_mask, self.run.batch)
                if self.router is not None and i == self.router.layer and self._group is None:
                    self._route(i, x)
            if i not in self.runtimes:
                return
            if past == 0 and self.run.rows is not None:
                self._run_dense(i)
            elif past == 0:
                self._select(i, x, kwargs["position_embeddings"])
            else:
                self._decode_step(i, x)
            self._count(i, x.shape[0], x.shape[1], past)
        return hook

    def _observe_rows(self, i: int, x: torch.Tensor) -> None:
        """prefill=dense: the method sees each row as a batch of its own; the router decides each row
        where it reads, and nothing stops (every layer of the prefill runs dense, whatever the route)."""
        run = self.run
        for b, batch in enumerate(run.rows):
            self.method.observe(i, x[b : b + 1], run.token_mask[b : b + 1], batch)
        if self.router is not None and i == self.router.layer:
            decided = self.router.decide(x, run.token_mask)
            run.rows = [Batch(d, (f,), batch.state) for d, f, batch in zip(decided.decisions, decided.facts, run.rows)]

    def _run_dense(self, i: int) -> None:
        """prefill=dense: layer i's prefill runs its original modules (its KV cache then holds every head),
        while `_capture` keeps each row's activations for the selection at the first decode step."""
        rt = self.runtimes[i]
        rt.set_mask(None)
        rt.cache_kv_heads = None

    def _capture(self, i: int, site: str):
        def hook(module, args):
            run = self.run
            if run is None or run.rows is None or not run.prefilling:
                return
            h = args[0]                                   # [B, S, width]: the input of o_proj or down_proj
            valid = run.token_mask.to(h.device)[..., None]
            sq = (h.float().square() * valid).sum(1) / valid.sum(1).clamp(min=1)
            run.stats.setdefault(i, {})[site] = sq       # [B, width]: each row's mean square per channel
        return hook

    def _select_rows(self, i: int, x: torch.Tensor) -> None:
        """prefill=dense: each row's selection at layer i, from its own prefill's activations, scored as
        the method scores a probe (fused with history for PP); rows routed dense keep every structure."""
        run, rt, g = self.run, self.runtimes[i], self.loaded.geometry
        stats = run.stats.pop(i)
        history = self._layer_history(i, x.device)
        selections = []
        for b, batch in enumerate(run.rows):
            plan = self.plan_for(batch.decision)
            if plan is None:
                selections.append(None)
                continue
            n = int(run.prefill_tokens[b])
            probe = ProbeStats(attn=stats["attn"][b], mlp=stats["mlp"][b], tokens=n, context=n)
            ctx = LayerContext(layer=i, parts=rt.parts, geometry=g, budget=plan.budgets[i], probe=probe,
                               history=history, residual=x[b : b + 1],
                               token_mask=torch.ones(1, x.shape[1], dtype=torch.bool, device=x.device), batch=batch)
            selections.append(self.method.select(ctx))
        rt.set_row_masks(selections)
        rt.cache_kv_heads = rt.mask.kv_heads
        while len(run.row_kept) < len(selections):
            run.row_kept.append([])
        for b, sel in enumerate(selections):
            self._record_kept(i, None if sel is None else sel.mask, run.row_kept[b])
        self._record_kept(i, rt.mask)

    def _route(self, layer: int, x: torch.Tensor) -> None:
        """Ask the router for each row's decision; run on if they agree and the layers before `layer`
        ran as that decision would have run them, else stop the forward (run_routed runs the groups)."""
        run = self.run
        decided = self.router.decide(x, run.token_mask)
        if len(set(decided.decisions)) == 1:
            decision = decided.decisions[0]
            plan = self.plan_for(decision)
            ran_alike = all(plan is not None and plan.budgets[i] == self.plan.budgets[i]
                            for i in self.runtimes if i < layer)
            if ran_alike:
                run.batch = Batch(decision, tuple(decided.facts), run.batch.state)
                return
        batch, seq = run.shape
        dense = flops.dense_block_flops(self.loaded.geometry, batch * seq, (seq + 1) / 2)
        spent = run.flops.total.probe + sum(run.prefix[i] if i in self.runtimes else dense for i in range(layer))
        raise _Stopped(decided, spent)

    def _select(self, i: int, x: torch.Tensor, position_embeddings) -> None:
        rt, run = self.runtimes[i], self.run
        g = self.loaded.geometry
        token_mask = run.token_mask
        plan = self.plan_for(run.batch.decision)
        rt.cache_kv_heads = None
        if plan is None:  # a dense route: the original modules run
            rt.set_mask(None)
            run.last_probe[i] = None
            self._record_kept(i, None)
            return
        probe = None
        if self.method.uses_probe:
            samples, positions = choose_probe(x, token_mask, self.options.probe_samples, self.options.probe_positions)
            cos, sin = position_embeddings
            probe = run_probe(rt.parts, g, i, x, samples, positions, token_mask, cos, sin)
            queries = probe.tokens
            cost = flops.probe_flops(g, queries, probe.context, probe.context / max(1, len(samples)) / 2)
            run.flops.add(FlopCount(probe=cost), prefill=True)
        history = self._layer_history(i, x.device)
        ctx = LayerContext(layer=i, parts=rt.parts, geometry=g, budget=plan.budgets[i], probe=probe,
                           history=history, residual=x, token_mask=token_mask, batch=run.batch)
        sel = self.method.select(ctx)
        rt.set_mask(sel.mask, sel.attn_bias, sel.mlp_bias)
        run.last_probe[i] = probe
        self._record_kept(i, sel.mask)

    def _layer_history(self, i: int, device: torch.device) -> dict | None:
        """Layer i's history where its block runs (under a device map, layers sit on several devices)."""
        if self.history is None:
            return None
        return {s: self.history[s][i].to(device) for s in ("attn", "mlp")}

    def _record_kept(self, i: int, mask: LayerMask | None, kept: list[dict] | None = None) -> None:
        """Layer i's kept counts for the batch, or for one row (no mask: the layer runs whole, left as {})."""
        kept = self.run.kept if kept is None else kept
        while len(kept) <= i:
            kept.append({})
        kept[i] = {} if mask is None else {"heads": len(mask.heads), "kv_heads": len(mask.kv_heads),
                                                       "channels": len(mask.channels)}

    def _count(self, i: int, batch: int, seq: int, past: int) -> None:
        rt, g = self.runtimes[i], self.loaded.geometry
        m = rt.mask
        if m is None:  # a dense route
            cost = flops.dense_block_flops(g, batch * seq, past + (seq + 1) / 2)
        else:
            cost = flops.block_flops(g, batch * seq, past + (seq + 1) / 2, len(m.heads), len(m.kv_heads), len(m.channels))
        run = self.run
        run.flops.add(FlopCount(pruned=cost), prefill=past == 0)
        if past == 0:
            run.prefix[i] = cost
        if past:  # what the step read: the weights that ran, once for the batch, and each row's KV cache
            heads, kv, channels = ((g.num_heads, g.num_kv_heads, g.intermediate_size) if m is None
                                   else (len(m.heads), len(m.kv_heads), len(m.channels)))
            size = self.loaded.model.dtype.itemsize
            run.decode_bytes.weights += flops.block_weight_bytes(g, heads, kv, channels, size)
            run.decode_bytes.kv += flops.kv_read_bytes(g, kv, batch, _window(g, i, past + seq), size)
        # A re-probe during decode may change mlp_bias but not whether there is one (same method state).
        biased = (rt.attn_bias is not None) + (rt.mlp_bias is not None)
        run.flops.add(FlopCount(bias=flops.bias_flops(g, batch * seq, biased)), prefill=past == 0)

    def _decode_step(self, i: int, x: torch.Tensor) -> None:
        run = self.run
        n = run.decode_steps.get(i, 0) + 1
        run.decode_steps[i] = n
        if run.rows is not None:
            if n >= self.options.dense_tokens and i in run.stats:  # step n makes generated token n + 1
                self._select_rows(i, x)
            return
        every = self.options.reprobe_every
        if every and n % every == 0 and self.runtimes[i].mask is not None:
            self.runtimes[i].reprobe = True

    def _mlp_reprobe(self, i: int):
        """Re-pick MLP channels from the current decode tokens; heads stay (the KV cache holds them)."""
        def reselect(x: torch.Tensor) -> None:
            rt, g = self.runtimes[i], self.loaded.geometry
            run = self.run
            probe = mlp_probe(rt.parts, g, x, self.options.probe_samples, attn=run.last_probe[i].attn)
            run.flops.add(FlopCount(probe=flops.mlp_probe_flops(g, probe.tokens)), prefill=False)
            ctx = LayerContext(layer=i, parts=rt.parts, geometry=g, budget=self.plan.budgets[i], probe=probe,
                               history=self._layer_history(i, x.device), residual=x,
                               token_mask=torch.ones(x.shape[:2], dtype=torch.bool, device=x.device),
                               batch=run.batch)
            sel = self.method.select(ctx)
            mask = LayerMask(heads=rt.mask.heads, kv_heads=rt.mask.kv_heads, channels=sel.mask.channels)
            rt.set_mask(mask, rt.attn_bias, sel.mlp_bias)
        return reselect

    def _ema_observer(self, i: int):
        m = self.options.ema_momentum

        def observe(site: str, kept: torch.Tensor, x: torch.Tensor) -> None:
            if x.shape[1] == 1:  # decode steps: one token is too noisy to move history
                return
            valid = self.run.token_mask
            h = self.history[site][i]
            batch_sq = x[valid.to(x.device)].float().square().mean(0).to(h.device)
            kept = kept.to(h.device)
            h[kept] = m * h[kept] + (1 - m) * batch_sq
        return observe

    # -- reporting -------------------------------------------------------------------------
    @property
    def record(self) -> BatchRecord:
        run = self.run
        if run is None:
            return BatchRecord([], FlopCount(), PhaseFlops())
        return BatchRecord(run.kept, run.flops.total, run.flops)

    def kept_counts(self, row: int | None = None) -> KeptCounts:
        """The current batch's kept counts per layer (or one row's, where rows chose their own);
        dense layers show their full size."""
        g, run = self.loaded.geometry, self.run
        kept = [] if run is None else run.kept if row is None or not run.row_kept else run.row_kept[row]
        full = {"heads": g.num_heads, "kv_heads": g.num_kv_heads, "channels": g.intermediate_size}
        rows = [kept[i] if i < len(kept) and kept[i] else full for i in range(g.num_layers)]
        return KeptCounts(*(tuple(r[k] for r in rows) for k in full))

    def row_reports(self, rows: int) -> list[RowReport]:
        """What each of the current batch's `rows` rows records of its run (aapp.methods.report): its share
        of the batch's FLOPs (what ran), its kept counts and its method's facts."""
        run = self.run
        flops_run = PhaseFlops(run.flops.total.copy(), run.flops.prefill.copy())
        reads = run.decode_bytes.copy()
        if run.rows is not None:  # each row chose its own structures and was its own batch to the method
            return [RowReport(flops_run, rows, self.kept_counts(b), self.method.facts(batch, 1)[0], reads)
                    for b, batch in enumerate(run.rows)]
        kept = self.kept_counts()
        return [RowReport(flops_run, rows, kept, facts, reads) for facts in self.method.facts(run.batch, rows)]


def _window(g, layer: int, context: int) -> int:
    """The cached positions a layer's attention reads: all of them, or its sliding window's."""
    window = g.sliding_window[layer]
    return context if window is None else min(context, window)


def run_routed(handle: PrunedModel, n: int, step: Callable[[RowGroup], T]) -> list[GroupRun[T]]:
    """`step` on a batch's `n` rows (it runs the handle's model on them), and what each row records.
    Where the method's router splits the batch (or its route needs the layers before the router run
    otherwise), the forward stops at the router's layer and `step` runs again on each group of rows the
    router decided alike, under that decision, each group paying its rows' share of the stopped prefill."""
    whole = RowGroup(list(range(n)))
    try:
        result = step(whole)
    except _Stopped as stopped:
        return [_run_group(handle, group, step) for group in group_by_decision(stopped.decided, stopped.spent)]
    return [GroupRun(whole, result, handle.row_reports(n))]


def _run_group(handle: PrunedModel, group: RowGroup, step: Callable[[RowGroup], T]) -> GroupRun[T]:
    handle._group = group
    try:
        result = step(group)
    finally:
        handle._group = None
    return GroupRun(group, result, handle.row_reports(len(group.rows)))


def group_by_decision(decided: RowDecisions, spent: float) -> list[RowGroup]:
    """A batch's rows grouped by decision, in order of first appearance; each group pays its rows'
    share of the `spent` FLOPs of the prefill the router stopped."""
    n = len(decided.decisions)
    order = list(dict.fromkeys(decided.decisions))
    return [RowGroup(rows, d, spent * len(rows) / n, tuple(decided.facts[i] for i in rows))
            for d in order for rows in [[i for i in range(n) if decided.decisions[i] == d]]]


def prune_model(loaded: LoadedModel, method: Method, options: PruneOptions = PruneOptions(),
                calib: Calibration | None = None) -> PrunedModel:
    """Prune `loaded.model` in place (reversibly) with `method` at `options.ratio`."""
    if not 0 <= options.ratio < 1:
        raise AappError(f"ratio must be in [0, 1), got {options.ratio}")
    return PrunedModel(loaded, method, options, calib)
