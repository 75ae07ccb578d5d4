"""generate_rows: batches, their order, resume (routing: test_routing.py)."""

import torch

from aapp.methods import Dense, Router, RowDecisions
from aapp.prompts import Prompt
from aapp.pruning.engine import PruneOptions, prune_model
from aapp.pruning.run import GenerationSettings, generate_rows
from tests.conftest import PROMPTS


class BatchLengths(Dense):
    """Records the real token count of every row of every batch it is handed."""

    def __init__(self):
        self.batches = []

    def router(self):
        return Router(0, self.decide)

    def decide(self, x, token_mask):
        self.batches.append(token_mask.sum(1).tolist())
        return RowDecisions([None] * x.shape[0], [{} for _ in range(x.shape[0])])


def padded_tokens(batches):
    return sum(max(b) * len(b) for b in batches)


def test_sort_by_length_batches_similar_lengths_and_keeps_input_order(tiny_llama):
    texts = [PROMPTS[1], PROMPTS[2], PROMPTS[3], PROMPTS[0]]  # long, short, long, short
    prompts = [Prompt(f"p{i}", t, None, "t") for i, t in enumerate(texts)]
    runs = {}
    for sort in (False, True):
        method = BatchLengths()
        settings = GenerationSettings(max_new_tokens=3, batch_size=2, sort_by_length=sort)
        runs[sort] = method, list(generate_rows(tiny_llama, prompts, method, PruneOptions(), None, settings))
    (plain, plain_rows), (by_length, rows) = runs[False], runs[True]
    assert [r["id"] for r in rows] == [r["id"] for r in plain_rows] == ["p0", "p1", "p2", "p3"]
    # The two short prompts share a batch, and so do the two long ones: less padding.
    assert [sorted(b) for b in by_length.batches] == [sorted(b) for b in sorted(by_length.batches)]
    assert max(by_length.batches[0]) <= min(by_length.batches[1])
    assert padded_tokens(by_length.batches) < padded_tokens(plain.batches)
    # A dense row's generation is its own prompt's, whichever batch it ran in.
    assert [r["completion"] for r in rows] == [r["completion"] for r in plain_rows]


TIMING = ("latency_s", "batch_latency_s", "prefill_s", "decode_s")


def _computed(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


class Counting(Dense):
    """Dense, counting the batches it runs; `stateful` claims that a batch depends on the ones before."""

    def __init__(self, stateful=False):
        self.batches, self.stateful = 0, stateful

    @property
    def carries_state(self):
        return self.stateful

    def new_state(self):
        self.batches += 1


def test_a_resumed_run_skips_finished_batches_and_gives_the_rest_of_the_rows(tiny_llama):
    from aapp.pruning.run import run_provenance

    prompts = [Prompt(f"q{i}", PROMPTS[i % len(PROMPTS)] + f" {i}", None, "test") for i in range(7)]
    settings = GenerationSettings(max_new_tokens=3, batch_size=2, sort_by_length=True)
    whole = list(generate_rows(tiny_llama, prompts, Dense(), PruneOptions(), None, settings))
    assert all(r["provenance"] == run_provenance(tiny_llama, Dense(), PruneOptions(), None, settings) for r in whole)
    for stateful in (False, True):
        method = Counting(stateful)
        rest = list(generate_rows(tiny_llama, prompts, method, PruneOptions(), None, settings, start=3))
        assert _computed(rest) == _computed(whole[3:])
        # Sorted batches mix finished and unfinished prompts: only those of finished prompts alone are
        # skipped, unless the method carries state, when every batch is replayed.
        lengths = [len(ids) for ids in tiny_llama.tokenizer([p.text for p in prompts])["input_ids"]]
        order = sorted(range(7), key=lengths.__getitem__)
        batches = [order[i:i + 2] for i in range(0, 7, 2)]
        assert method.batches == (len(batches) if stateful else sum(any(i >= 3 for i in b) for b in batches))
