"""Hybrid forwards every hook of the Method protocol to both of its methods."""

import inspect
from types import SimpleNamespace

import torch

from aapp.methods.base import Batch, LayerContext, Method, Selection
from aapp.methods.hybrid import Hybrid
from aapp.methods.masks import LayerMask

# What the engine calls: every public method and property a Method defines (not its class constants).
HOOKS = sorted(name for name, value in inspect.getmembers(Method)
               if not name.startswith("_") and (callable(value) or isinstance(value, property)))


class Recording(Method):
    """A method that records each hook it is called with, and returns something of its own."""

    needs_calibration = False

    def __init__(self, tag: str, layers: set[int]):
        self.tag, self.layers, self.calls = tag, layers, []

    @property
    def uses_probe(self):
        self.calls.append("uses_probe")
        return self.tag == "h"

    @property
    def carries_state(self):
        self.calls.append("carries_state")
        return self.tag == "c"

    @property
    def engine_options(self):
        self.calls.append("engine_options")
        return ("dense_layers",) if self.tag == "h" else ("backend", "dense_layers")

    def settings(self):
        self.calls.append("settings")
        return {self.tag: self.tag}

    def check_calibration(self, calib):
        self.calls.append("check_calibration")

    def bind(self, *args):
        self.calls.append("bind")

    def router(self):
        self.calls.append("router")

    def new_state(self):
        self.calls.append("new_state")
        return self.tag

    def watch_layers(self):
        self.calls.append("watch_layers")
        return self.layers

    def observe(self, layer, x, token_mask, batch):
        self.calls.append(("observe", batch.state))

    def select(self, ctx):
        self.calls.append(("select", ctx.batch.state))
        return Selection(LayerMask.from_kept(torch.tensor([0]), torch.tensor([0]), ctx.geometry))

    def facts(self, batch, rows):
        self.calls.append(("facts", batch.state))
        return [self.tag] * rows


def test_every_method_hook_is_overridden_by_hybrid():
    missing = [h for h in HOOKS if getattr(Hybrid, h) is getattr(Method, h)]
    assert not missing, f"Hybrid does not forward {missing}"


def test_hybrid_forwards_every_hook_to_both_with_each_its_own_state():
    h, c = Recording("h", {1}), Recording("c", {2})
    hy = Hybrid(h, c)
    assert hy.uses_probe and hy.carries_state
    assert hy.engine_options == ("dense_layers", "backend")
    assert hy.settings() == {"heads_from.h": "h", "channels_from.c": "c"}
    hy.check_calibration(None)
    hy.bind(None, None, None, None, None)
    assert hy.router() is None
    assert hy.watch_layers() == {1, 2}
    batch = Batch(state=hy.new_state())
    hy.observe(1, None, None, batch)
    hy.observe(2, None, None, batch)
    geometry = SimpleNamespace(num_heads=2, num_kv_heads=1, group_size=2, head_dim=4, intermediate_size=8)
    hy.select(LayerContext(0, None, geometry, None, None, None, torch.zeros(1), torch.ones(1), batch))
    assert hy.facts(batch, 2) == ["h", "h"]
    for m in (h, c):
        names = {call if isinstance(call, str) else call[0] for call in m.calls}
        assert set(HOOKS) <= names, f"{m.tag} never saw {set(HOOKS) - names}"
        assert ("observe", m.tag) in m.calls and ("select", m.tag) in m.calls and ("facts", m.tag) in m.calls
    assert ("observe", "c") not in h.calls  # each sees only the layers it watches
