"""Cost as a user pays it: a roofline estimate of a request's time on a stated device, from what its
row records (FLOPs by phase, the bytes each decode step read, the tokens it generated).

    prefill_s = prefill FLOPs run / peak FLOP/s                     (one parallel pass: compute-bound)
    decode_s  = steps x max(step FLOPs / peak, step bytes / bandwidth)   (each step reads the weights
                                                                          that run and the KV cache)

with the bytes rescaled from the dtype the row ran in to the device's (bf16: 2 bytes an element).
Published peaks, not measurements: the estimate says how the saving scales, and ranks schedules,
where this CPU's wall-clock measures two implementations as much as the pruning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    name: str
    peak_flops: float     # FLOP/s, dense, in the dtype below
    bandwidth: float      # bytes/s of memory
    element_bytes: int = 2


H100 = Device("H100 SXM, bf16 dense (989 TFLOP/s, 3.35 TB/s)", 989e12, 3.35e12)


def estimated_seconds(row: Mapping, device: Device = H100) -> float | None:
    """A row's request time on `device` by the model above; None where the row lacks what it needs
    (rows written before FLOPs by phase and decode bytes were recorded)."""
    flops, reads, new = row.get("flops") or {}, row.get("decode_bytes"), row.get("new_tokens")
    prefill, decode = flops.get("prefill"), flops.get("decode")
    if prefill is None or decode is None or reads is None or new is None:
        return None
    seconds = prefill["run"] / device.peak_flops
    steps = max(int(new) - 1, 0)  # the first token comes from the prefill's logits
    if steps and reads.get("weights") is not None:
        scale = device.element_bytes / reads.get("element_bytes", device.element_bytes)
        step_bytes = (reads["weights"] + reads["kv"]) * scale
        seconds += steps * max(decode["run"] / steps / device.peak_flops, step_bytes / device.bandwidth)
    return seconds
