"""Pruning methods: the protocol the engine drives (base), the shared selection machinery
(plan, masks, scores), each method in its own module, and the registry that names them.

Built-in methods register here through the same `register` an extension would call.
"""

from aapp.methods import aapp, dense, hybrid, pp, static
from aapp.methods.aapp import AAPP, AAPPOptions, add_alignment
from aapp.methods.base import Batch, LayerContext, Method, ProbeStats, Router, RowDecisions, Selection
from aapp.methods.dense import Dense
from aapp.methods.pp import PPScoring, ProbePruning
from aapp.methods.registry import (MethodSpec, check_method_spec, facts_types, make_method, read_row_report, register, registered,
                                   registration)
from aapp.methods.static import Flap, WandaSP

for _registration in (dense.REGISTRATION, pp.REGISTRATION, static.WANDA_SP, static.FLAP, aapp.REGISTRATION,
                      hybrid.REGISTRATION):
    register(_registration)

__all__ = [
    "AAPP",
    "AAPPOptions",
    "Batch",
    "Dense",
    "Flap",
    "LayerContext",
    "Method",
    "MethodSpec",
    "PPScoring",
    "ProbePruning",
    "ProbeStats",
    "Router",
    "RowDecisions",
    "Selection",
    "WandaSP",
    "add_alignment",
    "check_method_spec",
    "facts_types",
    "make_method",
    "read_row_report",
    "register",
    "registered",
    "registration",
]
