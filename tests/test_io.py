"""aapp.io's writers and checks: a result appears whole and only on success, a failure leaves the old
one and no temp behind, modes follow the umask, and a check fails with a one-line InputError."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from aapp.errors import InputError
from aapp.io import atomic_dir, atomic_write, check_dir_writable, check_new_dir, check_writable, write_files

PROC = Path("/proc/self")  # not even root may create entries there


@pytest.fixture
def umask():
    """Set a umask for one test and restore the caller's."""
    before = os.umask(0o022)
    os.umask(before)
    yield lambda mask: os.umask(mask)
    os.umask(before)


@pytest.fixture
def read_only(monkeypatch):
    """Make directories that os.access, which the checks ask, calls read-only: root ignores permission bits."""
    denied: set[Path] = set()
    real_access = os.access

    def access(path, mode_, *a, **k):
        return not (Path(path) in denied and mode_ & os.W_OK) and real_access(path, mode_, *a, **k)

    def make(path: Path) -> Path:
        path.mkdir(parents=True)
        denied.add(path)
        return path

    monkeypatch.setattr(os, "access", access)
    return make


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def listing(d: Path) -> dict[str, bytes | None]:
    """Every entry under `d`, temp files included, with file contents."""
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert text and "\n" not in text
    return text


# -- atomic_write --------------------------------------------------------------------------------


def test_atomic_write_appears_only_when_the_block_ends(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_write(target) as f:
        f.write("first half, ")
        assert not target.exists(), "a reader must not see a half-written file"
        f.write("second half")
    assert target.read_text() == "first half, second half"
    assert listing(tmp_path) == {"sub": None, "sub/out.txt": b"first half, second half"}

    with atomic_write(target) as f:
        f.write("new")
        assert target.read_text() == "first half, second half"
    assert target.read_text() == "new"


@pytest.mark.parametrize("mode_", ["w", "wb"])
def test_atomic_write_failure_keeps_the_old_file_and_no_temp(tmp_path, mode_):
    target = tmp_path / "out"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, mode_) as f:
            f.write("new" if mode_ == "w" else b"new")
            raise RuntimeError("interrupted")
    assert listing(tmp_path) == {"out": b"old"}


def test_atomic_write_verify_sees_the_whole_file_and_can_refuse_it(tmp_path):
    target = tmp_path / "out"
    target.write_text("old")
    seen = []

    def refuse(tmp: Path) -> None:
        seen.append((tmp.parent, tmp.read_text()))
        raise InputError("not what was promised")

    with pytest.raises(InputError, match="not what was promised"):
        with atomic_write(target, verify=refuse) as f:
            f.write("new")
    assert seen == [(tmp_path, "new")]
    assert listing(tmp_path) == {"out": b"old"}

    with atomic_write(target, verify=lambda tmp: None) as f:
        f.write("new")
    assert target.read_text() == "new"


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002], ids=oct)
def test_atomic_write_mode_follows_the_umask(tmp_path, umask, mask):
    umask(mask)
    plain = tmp_path / "plain"
    plain.write_text("x")
    with atomic_write(tmp_path / "atomic") as f:
        f.write("x")
    assert mode(tmp_path / "atomic") == mode(plain) == 0o666 & ~mask


# -- write_files ---------------------------------------------------------------------------------


def test_write_files_replaces_all_and_leaves_other_files(tmp_path, umask):
    umask(0o027)
    out = tmp_path / "out"
    write_files(out, {"a.json": b"1", "b.csv": b"2"})
    (out / "notes.txt").write_text("mine")
    write_files(out, {"a.json": b"one", "b.csv": b"two"})
    assert listing(out) == {"a.json": b"one", "b.csv": b"two", "notes.txt": b"mine"}
    assert mode(out / "a.json") == 0o640


def test_write_files_failure_on_a_later_file_replaces_none(tmp_path):
    out = tmp_path / "out"
    write_files(out, {"a": b"old a", "b": b"old b", "c": b"old c"})
    with pytest.raises(TypeError):  # "b" is staged after "a" and fails: "a" must not be committed alone
        write_files(out, {"a": b"new a", "b": "not bytes", "c": b"new c"})
    assert listing(out) == {"a": b"old a", "b": b"old b", "c": b"old c"}


# -- atomic_dir ----------------------------------------------------------------------------------


def test_atomic_dir_builds_then_renames(tmp_path, umask):
    umask(0o027)
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text("{}")
        assert tmp.parent == tmp_path and not out.exists()
    assert listing(tmp_path) == {"model": None, "model/config.json": b"{}"}
    assert mode(out) == 0o750


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002], ids=oct)
def test_atomic_dir_gives_what_the_block_wrote_the_umask_modes(tmp_path, umask, mask):
    """safetensors' writer makes model.safetensors owner-only: in a shared AAPP_CACHE another user got
    "Permission denied". Whatever the block writes ends with the modes of a plain open() and mkdir()."""
    import tempfile

    umask(mask)
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        fd, name = tempfile.mkstemp(dir=tmp)  # owner-only, as the writers that use mkstemp leave it
        os.close(fd)
        os.rename(name, tmp / "model.safetensors")
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "run.sh").write_text("x")
        os.chmod(tmp / "sub" / "run.sh", 0o700)
    assert mode(out / "model.safetensors") == 0o666 & ~mask
    assert mode(out / "sub") == mode(out) == mode(out / "sub" / "run.sh") == 0o777 & ~mask


def test_models_random_writes_weights_readable_by_others(tmp_path, umask):
    from aapp.models.synthetic import save_random

    umask(0o022)
    save_random("tiny-llama", tmp_path / "m", layers=1)
    assert {p.name: mode(p) for p in (tmp_path / "m").iterdir()}["model.safetensors"] == 0o644


def test_atomic_dir_replaces_whole_and_a_failure_keeps_the_old_one(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old-only.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out, check=None) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("interrupted")
    assert listing(tmp_path) == {"model": None, "model/old-only.txt": b"old"}

    with atomic_dir(out, check=None) as tmp:
        (tmp / "new.txt").write_text("new")
    assert listing(tmp_path) == {"model": None, "model/new.txt": b"new"}, "replaced whole, no old file kept"


def test_atomic_dir_default_check_refuses_a_non_empty_dir(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "mine.txt").write_text("mine")
    with pytest.raises(InputError) as exc:
        with atomic_dir(out):
            pytest.fail("the block must not run")
    assert "not empty" in one_line(exc)
    assert listing(tmp_path) == {"model": None, "model/mine.txt": b"mine"}


def test_atomic_dir_check_runs_again_at_the_swap(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(InputError, match="not empty"):
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("new")
            out.mkdir()  # someone else filled the directory while we worked
            (out / "theirs.txt").write_text("theirs")
    assert listing(tmp_path) == {"model": None, "model/theirs.txt": b"theirs"}


# -- checks --------------------------------------------------------------------------------------


def test_check_writable_accepts_a_new_file_and_creates_nothing(tmp_path):
    assert check_writable(tmp_path / "out.json") == tmp_path / "out.json"
    assert list(tmp_path.iterdir()) == []


def test_check_writable_refuses_a_file_in_a_missing_directory(tmp_path):
    """`prune --out /nonexistent/dir/x.jsonl` made the directories without a word: a typo'd directory is an error."""
    with pytest.raises(InputError) as exc:
        check_writable(tmp_path / "a" / "b" / "out.json", "--out")
    assert one_line(exc) == f"--out {tmp_path / 'a' / 'b' / 'out.json'}: no directory {tmp_path / 'a' / 'b'}; create it first"
    assert list(tmp_path.iterdir()) == []


def test_check_writable_refusals_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError) as exc:
        check_writable(tmp_path, "--out")
    assert one_line(exc) == f"--out {tmp_path}: is a directory, expected a file path"
    with pytest.raises(InputError) as exc:
        check_writable(tmp_path / "file" / "out.json")
    assert f"cannot create directory: {tmp_path / 'file'} is not a directory" in one_line(exc)
    if PROC.is_dir():
        with pytest.raises(InputError) as exc:
            check_writable(PROC / "out.json")
        assert one_line(exc).endswith(f"{PROC} is not writable")


def test_check_writable_read_only_dir(tmp_path, read_only):
    ro = read_only(tmp_path / "ro")
    with pytest.raises(InputError, match=re.escape(f"{ro} is not writable")):
        check_writable(ro / "out.json")
    with pytest.raises(InputError, match=re.escape(f"no directory {ro / 'sub'}")):
        check_writable(ro / "sub" / "out.json")


def test_check_dir_writable(tmp_path):
    assert check_dir_writable(tmp_path / "new" / "out", "--out") == tmp_path / "new" / "out"
    assert list(tmp_path.iterdir()) == [], "a check creates nothing"
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError) as exc:
        check_dir_writable(tmp_path / "file", "--out")
    assert one_line(exc) == f"--out {tmp_path / 'file'}: exists and is not a directory"
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match="exists and is not a directory"):
        check_dir_writable(tmp_path / "dangling")
    with pytest.raises(InputError) as exc:
        check_dir_writable(tmp_path / "file" / "sub", "--export", replace=True)
    assert "cannot create directory" in one_line(exc)
    if PROC.is_dir():
        with pytest.raises(InputError, match="cannot create directory"):
            check_dir_writable(PROC / "aapp-out")


def test_check_dir_writable_replace_needs_the_parent(tmp_path, read_only):
    parent = read_only(tmp_path / "ro")
    (parent / "out").mkdir()
    assert check_dir_writable(parent / "out") == parent / "out", "writing into it is fine"
    with pytest.raises(InputError, match=re.escape(f"{parent} is not writable")):
        check_dir_writable(parent / "out", replace=True)  # swapping it whole is not


def test_an_interrupt_keeps_the_finished_rows_and_no_temp(tmp_path):
    import json

    from aapp.errors import Interrupted
    from aapp.io import write_jsonl

    def rows():
        yield {"a": 1}
        yield {"a": 2}
        raise KeyboardInterrupt

    out, partial = tmp_path / "o.jsonl", tmp_path / "o.jsonl.partial"
    out.write_text("an earlier output\n")
    with pytest.raises(Interrupted) as e:
        write_jsonl(rows(), out, partial=partial)
    assert e.value.kept == 2 and "kept 2 finished rows" in e.value.note
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl", "o.jsonl.partial"]
    assert out.read_text() == "an earlier output\n"  # left as it was
    assert [json.loads(line) for line in partial.read_text().splitlines()] == [{"a": 1}, {"a": 2}]
    with pytest.raises(KeyboardInterrupt):  # without `partial`, nothing is kept, as before
        write_jsonl(rows(), tmp_path / "p.jsonl")
    assert not (tmp_path / "p.jsonl").exists() and len(list(tmp_path.iterdir())) == 2


def test_checks_try_the_directory_where_permission_bits_say_yes(tmp_path, monkeypatch):
    # Root passes os.access on /proc, yet nothing can be made there (issue #25: `--out /proc/x.jsonl`
    # ran the whole job, then ended in a traceback).
    monkeypatch.setattr(os, "access", lambda *a, **k: True)
    with pytest.raises(InputError) as exc:
        check_writable("/proc/x.jsonl", "--out")
    assert one_line(exc).startswith("--out /proc/x.jsonl: cannot create files in /proc (")
    with pytest.raises(InputError, match=re.escape("cannot create files in /proc")):
        check_dir_writable("/proc/aapp-out", "--out")
    assert check_writable(tmp_path / "ok.json") and list(tmp_path.iterdir()) == [], "the try leaves nothing"


def test_check_new_dir_and_atomic_dir_refuse_a_file_in_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("x")
    with pytest.raises(InputError, match="exists and is not a directory"):
        check_new_dir(tmp_path / "file", "--out")
    with pytest.raises(InputError, match="exists and is not empty"):
        check_new_dir(tmp_path / "full", "--out")
    assert check_new_dir(tmp_path / "new", "--out") == tmp_path / "new"
    with pytest.raises(InputError, match="exists and is not a directory"):
        with atomic_dir(tmp_path / "file"):
            pass
