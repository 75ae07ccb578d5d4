"""What a row records of its run, as typed data: the one definition that methods (their own facts),
the runner (which writes a row's JSON from it) and evaluation and serving (which read it) share.

    report = RowReport(flops=phases, kept=kept, facts=method_facts)
    row |= report.to_json()                      # the one place a row's run fields are written
    RowReport.from_json(row, facts_types).facts  # what evaluation and serving read

A method's own facts (AAPP's gate decision) travel in `facts`, a `MethodFacts` subclass the method
defines and owns: it names its JSON fields, reads them back and says, through the fields every
method's facts share, whether the row was escalated and with what score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from aapp.errors import InputError

FLOP_PARTS = ("dense", "pruned", "probe", "bias", "recompute")


@dataclass
class FlopCount:
    """FLOPs of a forward (or of a row's share of one): what dense would cost, and what ran."""

    dense: float = 0.0
    pruned: float = 0.0
    probe: float = 0.0
    bias: float = 0.0  # element-wise adds of method-added bias vectors (tokens x hidden per biased site)
    recompute: float = 0.0  # a prefill a router stopped, run again for its groups (aapp.pruning.engine)

    def add(self, other: "FlopCount") -> None:
        for name in FLOP_PARTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def scaled(self, factor: float) -> "FlopCount":
        return FlopCount(*(getattr(self, name) * factor for name in FLOP_PARTS))

    def copy(self) -> "FlopCount":
        return FlopCount(*(getattr(self, name) for name in FLOP_PARTS))

    @property
    def run(self) -> float:
        """The FLOPs that ran: pruned (and unpruned) layers, probes, bias adds and recomputed prefills."""
        return self.pruned + self.probe + self.bias + self.recompute

    @property
    def fraction(self) -> float:
        """Pruned, probe, bias and recomputed FLOPs as a fraction of dense (1.0 = no saving). The bias
        adds are compute the pruned model spends and the dense one does not, so they count (one FLOP
        per output element, against 6 x kept channels for the MLP's matmuls: a rounding error, but
        recorded)."""
        return self.run / self.dense if self.dense else 1.0

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in FLOP_PARTS} | {"fraction": self.fraction}

    @classmethod
    def from_dict(cls, data: Mapping, where: str = "row") -> "FlopCount":
        if not (isinstance(data, Mapping) and all(_is_number(data.get(k, 0.0)) for k in FLOP_PARTS)
                and _is_number(data.get("dense")) and _is_number(data.get("pruned"))):
            raise InputError(f"{where}: 'flops' must be an object with numeric 'dense', 'pruned' "
                             "(and 'probe', 'bias', 'recompute')")
        return cls(*(float(data.get(k, 0.0)) for k in FLOP_PARTS))


@dataclass
class PhaseFlops:
    """A forward's FLOPs in all (`total`, summed in the order they ran) and the part its prefill
    spent (prompt tokens, with its probes and any stopped prefill run again); the decode steps
    spent the rest."""

    total: FlopCount = field(default_factory=FlopCount)
    prefill: FlopCount = field(default_factory=FlopCount)

    def add(self, cost: FlopCount, prefill: bool) -> None:
        self.total.add(cost)
        if prefill:
            self.prefill.add(cost)

    @property
    def decode(self) -> FlopCount:
        return FlopCount(*(getattr(self.total, k) - getattr(self.prefill, k) for k in FLOP_PARTS))


@dataclass
class DecodeBytes:
    """What a forward's decode steps read from memory: the weights that ran (once per step, for the
    whole batch) and the KV cache, over `tokens` generated tokens (rows x steps)."""

    weights: float = 0.0
    kv: float = 0.0
    tokens: int = 0
    element_bytes: int = 4  # of the dtype the model ran in (a time model for another dtype rescales)

    def copy(self) -> "DecodeBytes":
        return DecodeBytes(self.weights, self.kv, self.tokens, self.element_bytes)

    def per_token(self) -> dict:
        """Bytes per generated token, at the batch size the forward ran with (None: no decode step ran)."""
        if not self.tokens:
            return {"weights": None, "kv": None, "element_bytes": self.element_bytes}
        return {"weights": self.weights / self.tokens, "kv": self.kv / self.tokens, "element_bytes": self.element_bytes}


@dataclass(frozen=True)
class KeptCounts:
    """Per layer, the heads, kv heads and MLP channels a row ran with (a dense layer at full size)."""

    heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    channels: tuple[int, ...]

    def to_json(self) -> dict:
        return {"heads": list(self.heads), "kv_heads": list(self.kv_heads), "channels": list(self.channels)}


class MethodFacts:
    """A method's own facts about one row, owned and named by the method (a frozen dataclass that
    subclasses this). Every method's facts carry the fields below, so evaluation and serving read
    whether a row was escalated, with what score and under what policy, without knowing the method."""

    key: ClassVar[str]          # the row field the facts live under
    fired: bool                 # the method's gate fired for the row
    score: float | None         # the row's own score (None: the method scored its batch only)
    batch_score: float | None   # the score of the batch the row ran in
    policy: str | None          # what the row ran as, where the method decides per request

    def to_json(self) -> object:
        """The row field's value (aapp.pruning.run writes it; `from_json` reads it back)."""
        raise NotImplementedError

    def to_api(self) -> object:
        """The value `aapp serve` answers with in its `aapp` object (the row's, unless the method renames)."""
        return self.to_json()

    @classmethod
    def from_json(cls, row: Mapping, where: str) -> "MethodFacts":
        """The facts of a row that has the `key` field (checked: one line naming the field if malformed)."""
        raise NotImplementedError


@dataclass(frozen=True)
class RowReport:
    """What one output row records of how it ran: the FLOPs of the group of rows it ran in (by
    phase) and its share of them (1 / `group_size`), the kept counts, and the method's own facts
    (with the policy the row ran under, where the method has one)."""

    flops: PhaseFlops | None
    group_size: int = 1
    kept: KeptCounts | None = None
    facts: MethodFacts | None = None
    decode_bytes: DecodeBytes | None = None

    @property
    def row_flops(self) -> FlopCount | None:
        """The row's share of its group's FLOPs."""
        return None if self.flops is None else self.flops.total.scaled(1 / self.group_size)

    @property
    def policy(self) -> str | None:
        return self.facts.policy if self.facts is not None else None

    def to_json(self) -> dict:
        """The row's run fields (the one writer: aapp.pruning.run and aapp.serve use it)."""
        out: dict = {}
        if self.flops is not None:  # the share of each part; the fraction is the group's (the same ratio)
            total, size = self.flops.total, self.group_size
            out["flops"] = {k: getattr(total, k) / size for k in FLOP_PARTS} | {"fraction": total.fraction}
            for phase, count in (("prefill", self.flops.prefill), ("decode", self.flops.decode)):
                out["flops"][phase] = {"dense": count.dense / size, "run": count.run / size, "fraction": count.fraction}
        if self.decode_bytes is not None:
            out["decode_bytes"] = self.decode_bytes.per_token() | {"batch_size": self.group_size}
        if self.kept is not None:
            out["kept"] = self.kept.to_json()
        if self.facts is not None:
            out[self.facts.key] = self.facts.to_json()
        if self.policy is not None:
            out["policy"] = self.policy
        return out

    @classmethod
    def from_json(cls, row: Mapping, facts_types: Sequence[type[MethodFacts]], where: str = "row") -> "RowReport":
        """A row's report, read back (FLOPs as a total, in `prefill`); what a row lacks stays None."""
        flops = row.get("flops")
        total = FlopCount.from_dict(flops, where) if flops is not None else None
        facts = None
        for kind in facts_types:
            if row.get(kind.key) is not None:
                facts = kind.from_json(row, where)
        return cls(PhaseFlops(total) if total is not None else None, 1, None, facts)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
