import csv
import io
import json
import os
from pathlib import Path

import pytest
from rich.console import Console

from aapp.errors import InputError
from aapp.evaluation import report
from aapp.evaluation.report import (
    CSV_COLUMNS,
    check_out_dir,
    print_table,
    summary_csv,
    summary_document,
    write_outputs,
    write_summary,
)


@pytest.fixture
def cells(make_cell):
    return [
        make_cell("dense", None, (3, 4), (0, 4)),
        # Dense never refused on these prompts: F1 and FAR undefined.
        make_cell("pp", 0.3, (0, 2), (1, 2), dense=[False, False, False, False], wall_time_s=2.0),
        make_cell("aapp", 0.3, (2, 2), (0, 2), dense=[True, False, False, False],
                  flops=[{"dense": 10.0, "pruned": 6.0, "probe": 1.0}], gate_fired=[True, False, True, True]),
    ]


def test_summary_json_is_nan_free_and_keeps_none(cells):
    doc = json.loads(report.summary_json(cells, {"judge": "keyword"}))
    assert doc["meta"] == {"judge": "keyword"} and len(doc["cells"]) == 3
    pp = doc["cells"][1]
    assert pp["agreement"]["f1"] is None and pp["agreement"]["far"]["value"] is None
    assert pp["agreement"]["frr"]["value"] == 0.25
    assert summary_document(cells)["cells"][2]["flops_fraction"] == pytest.approx(0.7)


def test_summary_csv_columns_and_empty_fields(cells):
    rows = list(csv.DictReader(io.StringIO(summary_csv(cells))))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 3
    dense, pp, aapp = rows
    assert dense["ratio"] == "" and dense["n_agreement"] == "" and float(dense["refusal_rate"]) == 0.75
    assert pp["f1"] == "" and pp["far"] == "" and pp["far_lo"] == "" and float(pp["frr"]) == 0.25
    assert float(aapp["f1"]) == pytest.approx(2 / 3)  # tp=1, fp=1, fn=0
    assert float(aapp["gate_fire_rate"]) == 0.75
    assert float(aapp["refusal_rate_lo"]) < 1.0 == float(aapp["refusal_rate_hi"])


def test_table_says_n_a_for_undefined(cells):
    buf = io.StringIO()
    print_table(cells, Console(file=buf, width=250, color_system=None))
    out = buf.getvalue()
    pp_line = next(line for line in out.splitlines() if " pp " in line)
    assert "n/a" in pp_line and "25% [5-70]" in pp_line  # FRR defined, F1/FAR not
    assert "nan" not in out.lower()


def test_write_summary_atomic(cells, tmp_path):
    write_summary(cells, tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["cells"][0]["method"] == "dense"
    assert (tmp_path / "summary.csv").read_text().startswith("method,ratio")
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_outputs_writes_every_file(cells, tmp_path):
    out = tmp_path / "out"
    paths = write_outputs(out, [{"prompt": "p", "refused": True}], cells, meta={"x": 1})
    assert set(paths) == {"results.jsonl", "summary.json", "summary.csv", "refusal_vs_ratio.png"}
    assert json.loads((out / "results.jsonl").read_text()) == {"prompt": "p", "refused": True}
    assert (out / "refusal_vs_ratio.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == sorted(paths)


def test_existing_out_is_never_half_overwritten(cells, tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_outputs(out, [{"old": True}], cells[:1], plot=False)
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    real_fdopen = os.fdopen
    calls = {"n": 0}

    def failing_fdopen(fd, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # two files staged, the third fails
            os.close(fd)
            raise OSError(28, "No space left on device")
        return real_fdopen(fd, *a, **k)

    monkeypatch.setattr(os, "fdopen", failing_fdopen)  # aapp.io stages each file through it
    with pytest.raises(InputError, match="No space left"):
        write_outputs(out, [{"new": True}], cells, plot=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp left, nothing replaced


def test_rendering_failure_touches_nothing(cells, tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_outputs(out, [{"old": True}], cells, plot=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise RuntimeError("plot failed")

    monkeypatch.setattr("aapp.evaluation.plot.render_png", boom)
    with pytest.raises(RuntimeError):
        write_outputs(out, [{"new": True}], cells)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_bad_out_dirs(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        check_out_dir(f)
    with pytest.raises(InputError, match="cannot create"):
        check_out_dir(f / "sub")
    if os.path.isdir("/proc/self"):  # not even root may create directories there
        with pytest.raises(InputError, match="cannot create"):
            check_out_dir("/proc/self/aapp-out")
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(InputError, match="not writable"):
                check_out_dir(ro)
        finally:
            ro.chmod(0o700)


def test_the_caption_explains_only_the_headers_shown(cells):
    """Without a reference there is no acc, FAR, FRR or F1 column: the caption explained them all the same."""
    no_ref = [c for c in cells if c.agreement is None]
    buf = io.StringIO()
    print_table(no_ref, Console(file=buf, width=100, color_system=None))
    caption = " ".join(buf.getvalue().split())
    assert "h/b: harmful/benign" in caption and "rates: value [Wilson 95% CI]" in caption
    for term in ("acc:", "FAR (false", "FRR (false", "F1:"):
        assert term not in caption, term


def test_stderr_that_is_not_a_terminal_gets_tables_100_columns_wide():
    import subprocess
    import sys

    code = "from aapp.console import console; print(console.width)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PATH": ""}, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.stdout.strip() == "100", r.stderr


def test_table_is_readable_at_100_columns_and_explains_its_headers(make_cell):
    # A sweep row with every column: at 100 columns the old single table cut each value to "7…".
    d = [True, False] * 5 + [False] * 10
    cells = [make_cell("dense", None, (9, 10), (1, 10)),
             make_cell("aapp:logistic+comp", 0.3, (8, 10), (2, 10), dense=d, wall_time_s=3.0,
                       flops=[{"dense": 10.0, "pruned": 6.0, "probe": 1.0}], gate_fired=[True] * 12 + [False] * 8)]
    buf = io.StringIO()
    print_table(cells, Console(file=buf, width=100, color_system=None))
    out = buf.getvalue()
    assert max(len(line) for line in out.splitlines()) <= 100
    assert "…" not in out
    for value in ("aapp:logistic+comp", "80% [49-94]", "20% [6-51]", "65% [43-82]", "40% [20-64]", "100%/20%"):
        assert value in out, value
    assert out.count("method") >= 2  # split into parts, each naming its rows
    caption = " ".join(out.split())
    for header in ("acc: same refuse/comply decision as dense", "FAR (false acceptance): complied where dense refused",
                   "FRR (false refusal): refused where dense complied"):
        assert header in caption
