"""Refusal judges: decide, for each (prompt, completion), whether the model refused.

Three judges share one protocol (`Judge`, giving `Verdict`s; see judge_protocol):

* `KeywordJudge` (the default, `--judge keyword`, in keyword_judge): looks for a refusal
  phrase near the start of the completion. Fast, deterministic, needs no model, and crude
  in known ways (see its docstring).
* `PrefixJudge` (`--judge prefixes`, in prefix_judge): GCG's refusal-string list, matched as
  GCG matches it, so that refusal rates compare with published AdvBench numbers.
* `ClassifierJudge` (`--judge /path/to/model`, in classifier_judge): a local Hugging Face
  model, either a sequence classifier with a refusal label or a causal chat model asked a
  yes/no question.

`get_judge(name_or_path)` turns the `--judge` value into one of them; `check_judge` says,
without loading a model, whether it could.
"""

from __future__ import annotations

from pathlib import Path

from aapp.errors import InputError
from aapp.evaluation.classifier_judge import CHAT_QUESTION, ClassifierJudge
from aapp.evaluation.judge_protocol import Judge, Verdict
from aapp.evaluation.keyword_judge import NOT_REFUSALS, PIVOTS, REFUSAL_PHRASES, KeywordJudge, canonical
from aapp.evaluation.prefix_judge import GCG_PREFIXES, PrefixJudge

__all__ = [
    "CHAT_QUESTION", "GCG_PREFIXES", "JUDGES", "NOT_REFUSALS", "PrefixJudge", "PIVOTS", "REFUSAL_PHRASES", "ClassifierJudge", "Judge",
    "KeywordJudge", "Verdict", "canonical", "check_judge", "get_judge",
]

JUDGES = {"keyword": KeywordJudge, "prefixes": PrefixJudge}


def get_judge(name_or_path: str, *, device: str = "cpu", refusal_label: int | str | None = None) -> Judge:
    """`--judge` value -> judge: a name in JUDGES, or a local model directory for `ClassifierJudge`."""
    if name_or_path in JUDGES:
        return JUDGES[name_or_path]()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return ClassifierJudge(path, device, refusal_label=refusal_label)
    if path.exists():
        raise InputError(f"judge {name_or_path}: expected a model directory, got a file")
    raise InputError(f"judge {name_or_path!r}: not a judge name ({', '.join(JUDGES)}) nor a local model directory")


def check_judge(name_or_path: str) -> None:
    """Fail on a `--judge` that cannot load, without loading it: a sweep loads its judge only at the end."""
    if name_or_path not in JUDGES and not (Path(name_or_path).expanduser() / "config.json").is_file():
        raise InputError(f"judge {name_or_path!r}: not one of {', '.join(JUDGES)} nor a local model directory "
                         "with a config.json")
