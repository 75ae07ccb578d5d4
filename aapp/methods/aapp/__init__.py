"""AAPP in one room: the method, its options, gates, critical channels, calibration step and passes, its
section of the calibration file (store.py) and its gate thresholds fitted on pruned prefills (thresholds.py)."""

from aapp.errors import AappError
from aapp.methods.aapp.calibrate import STEP, AlignmentSettings, add_alignment
from aapp.methods.aapp.critical import CRITICAL, CriticalSet
from aapp.methods.aapp.gates import GATES, Gate
from aapp.methods.aapp.method import AAPP, AAPPOptions, GateFacts
from aapp.methods.aapp.restore import RESTORE
from aapp.methods.pp import scoring_for
from aapp.methods.registry import MethodSpec, Registration

__all__ = ["AAPP", "CRITICAL", "GATES", "REGISTRATION", "RESTORE", "AAPPOptions", "AlignmentSettings", "CriticalSet",
           "Gate", "add_alignment"]


POLICIES = {"dense": "routes each request: fired ones run unpruned (on_fire=dense)",
            "light": "routes each request: fired ones run at a lighter ratio, protected (give on_fire=R)"}
# Each variant is a preset of AAPP's options (an option given against it is an error, aapp.methods.registry).
PRESETS = {**{g: {"gate": g} for g in GATES}, "dense": {"on_fire": "dense"}}


def _build(spec: MethodSpec, options: AAPPOptions) -> AAPP:
    if spec.variant == "light" and options.on_fire == "dense":
        raise AappError(f"{spec.text} runs fired requests at a lighter ratio, but its options set on_fire=dense")
    # aapp:light without its ratio builds (so that its options can be listed), and refuses to bind.
    return AAPP(options, scoring_for(MethodSpec(spec.text, "pp", None, spec.compensate)),
                needs_route=spec.variant == "light")


REGISTRATION = Registration(
    "aapp", _build, "Alignment-Aware Probe Pruning: PP that keeps alignment-critical channels when a risk gate fires",
    variants={**{g: f"the {g} risk gate" for g in GATES}, **POLICIES}, compensable=True, options=AAPPOptions,
    calibration=STEP, facts=GateFacts, presets=PRESETS)
