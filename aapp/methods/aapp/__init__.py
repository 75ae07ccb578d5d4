"""AAPP in one room: the method, its gates, its critical channels, its calibration step."""

from dataclasses import replace

from aapp.methods.aapp.calibrate import add_alignment
from aapp.methods.aapp.critical import CRITICAL, CriticalSet
from aapp.methods.aapp.gates import GATES, Gate
from aapp.methods.aapp.method import AAPP, AAPPOptions
from aapp.methods.aapp.restore import RESTORE
from aapp.methods.pp import SITES, PPOptions
from aapp.methods.registry import MethodSpec, Registration

__all__ = ["AAPP", "CRITICAL", "GATES", "REGISTRATION", "RESTORE", "AAPPOptions", "CriticalSet", "Gate",
           "add_alignment"]


def _build(spec: MethodSpec, options: AAPPOptions | None) -> AAPP:
    options = options or AAPPOptions()
    if spec.variant is not None:
        options = replace(options, gate=spec.variant)
    return AAPP(options, PPOptions(compensate=SITES if spec.compensate else ()))


REGISTRATION = Registration(
    "aapp", _build, "Alignment-Aware Probe Pruning: PP that keeps alignment-critical channels when a risk gate fires",
    variants={g: f"the {g} risk gate" for g in GATES}, compensable=True)
