"""Scale-out: rank layout from the environment, batch sharding, and torchrun == one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from aapp.errors import InputError
from aapp.evaluation.distributed import Dist, env_ranks, session
from aapp.evaluation.sweep import CellSettings, run_sweep
from aapp.evaluation.sweep_plan import batches_of, is_stateful, plan_batches
from aapp.methods.aapp import AAPPOptions
from aapp.pruning.engine import PruneOptions
from tests.evaluation.sweep_inputs import (CHILD, TIMING, child_env, config_json, make_config, make_inputs, read_rows,
                                           settings_of)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's workers (OMP_NUM_THREADS=1), so numerics match
    yield
    torch.set_num_threads(before)


def test_env_ranks():
    assert env_ranks({}) is None
    assert env_ranks({"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}) == Dist(rank=1, world_size=3, local_rank=0)
    for bad in ({"RANK": "x", "WORLD_SIZE": "2"}, {"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "0", "WORLD_SIZE": "0"}):
        with pytest.raises(InputError):
            env_ranks(bad)


def test_single_process_session_has_identity_collectives(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    with session("cpu") as d:
        assert d == Dist() and not d.active and d.is_main
        assert d.gather({"a": 1}) == [{"a": 1}] and d.broadcast(3) == 3
        d.barrier()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with session("cpu") as d:  # torchrun with one process: no group needed
        assert not d.active


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("stateful", [False, True])
def test_every_batch_runs_on_exactly_one_rank(world, stateful):
    n_batches = 7
    for cell_index in range(4):
        plans = [plan_batches(cell_index, n_batches, Dist(rank=r, world_size=world), stateful) for r in range(world)]
        assert sorted(b for p in plans for b in p) == list(range(n_batches))
        if stateful:  # one rank runs the whole cell, in order; cells are spread over ranks
            assert plans[cell_index % world] == list(range(n_batches))
        else:
            assert all(all(b % world == r for b in p) for r, p in enumerate(plans))


def test_batches_are_fixed_by_batch_size_alone():
    assert [list(b) for b in batches_of(5, 2)] == [[0, 1], [2, 3], [4]]
    assert batches_of(0, 3) == []


def test_stateful_cells():
    cells = CellSettings(options={"ema_momentum": 0.9})
    assert is_stateful("pp", cells) and not is_stateful("dense", cells)
    cells = CellSettings(options={"refresh": 2})
    assert is_stateful("aapp", cells) and not is_stateful("pp", cells)


def test_two_process_torchrun_equals_one_process(tiny_model_dir, tmp_path):
    inputs = make_inputs(tmp_path, tiny_model_dir)
    # 5 harmful and 4 benign prompts in batches of 2, sorted by length: per set 3 and 2 batches, dealt
    # out to the ranks, the harmful set's last one short.
    # PP and AAPP pick channels per batch, so only whole-batch sharding can match; perplexity
    # cells are spread over the ranks too.
    # AAPP refreshing its gate carries state, so each of its cells runs whole on one rank, side by side
    # with the other rank's, as do the perplexity passes.
    kw = dict(methods=("dense", "pp", "aapp"), ratios=(0.5,), text=str(inputs.text), sort_by_length=True,
              aapp=dict(refresh=2))
    spec = tmp_path / "cfg.json"
    spec.write_text(config_json(settings_of(inputs, tmp_path / "torchrun", **kw)))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
         str(spec)], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        single = tmp_path / "single"
        run_sweep(make_config(inputs, single, **kw), progress=False)  # while the workers start up
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # the launcher and its workers, on failure or timeout
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-4000:]
    assert stdout.decode().strip() == ""

    out = tmp_path / "torchrun"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in single.iterdir())
    multi_doc, single_doc = (json.loads((d / "summary.json").read_text()) for d in (out, single))
    assert multi_doc["meta"].pop("world_size") == 2 and single_doc["meta"].pop("world_size") == 1
    for doc in (multi_doc, single_doc):
        for c in doc["cells"]:
            assert c.pop("wall_time_s") > 0
    assert multi_doc == single_doc
    assert all(c["perplexity"] is not None for c in multi_doc["cells"])
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(read_rows(out / "results.jsonl")) == strip(read_rows(single / "results.jsonl"))
