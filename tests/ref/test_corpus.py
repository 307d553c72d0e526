"""Training corpora. Oracles: the long-range corpus re-parsed with regular expressions written
here from its documented format (not from the generator's bookkeeping); files written by
the test for `load_text`; the fixed seeds' bytes compared with each other."""

from __future__ import annotations

import re

import numpy as np
import pytest

from scredge.errors import ScredgeError
from scredge.ref.corpus import (
    KEYS,
    LongRangeCorpus,
    check_text,
    load_text,
    prose_corpus,
    prose_sentences,
    split,
)

HEADER_RE = re.compile(rb"key: ([a-z]+)\.\n")
RECALL_RE = re.compile(rb"The key is ([a-z]+)\.")


@pytest.fixture(scope="module")
def longrange() -> LongRangeCorpus:
    return LongRangeCorpus.generate(seed=3, n_docs=24, doc_bytes=2500, gap_min=300, gap_max=600)


def test_prose_corpus_is_text():
    """Oracle: Python's docs are English text of a useful size with a known topic title."""
    data = prose_corpus()
    check_text(data, "prose")
    assert len(data) > 200_000 and b'The "assert" statement' in data
    assert len(prose_sentences()) > 500


def test_longrange_is_deterministic_per_seed(longrange):
    """Oracle: the same seed gives the same bytes and offsets; another seed other bytes."""
    again = LongRangeCorpus.generate(seed=3, n_docs=24, doc_bytes=2500)
    assert again.data == longrange.data
    assert np.array_equal(again.recall_offsets, longrange.recall_offsets)
    other = LongRangeCorpus.generate(seed=4, n_docs=24, doc_bytes=2500)
    assert other.data != longrange.data


def test_every_recall_states_its_documents_key_far_from_any_earlier_mention(longrange):
    """Oracle: a regex parse of the bytes. Each `The key is X.` repeats the key of the last
    `key: X.` header before it, lies >= 256 bytes (gap_min 300) after the previous mention
    of the key, and the generator's recorded offsets are exactly the parsed ones."""
    data = longrange.data
    headers = [(m.start(1), m.group(1).decode()) for m in HEADER_RE.finditer(data)]
    recalls = [(m.start(1), m.group(1).decode()) for m in RECALL_RE.finditer(data)]
    assert len(headers) == 24 and len(recalls) >= 24 * 3
    mentions = sorted(headers + recalls)
    for i, (offset, word) in enumerate(mentions):
        if (offset, word) in headers:
            continue
        doc_key = max(h for h in headers if h[0] < offset)[1]
        assert word == doc_key
        assert offset - mentions[i - 1][0] >= 300 > 256
    assert [o for o, _ in recalls] == longrange.recall_offsets.tolist()
    assert [KEYS.index(w) for _, w in recalls] == longrange.recall_keys.tolist()
    assert [KEYS.index(w) for _, w in headers] == longrange.doc_keys.tolist()
    assert longrange.recall_gaps.min() >= 300


def test_the_word_key_appears_only_in_headers_and_recalls(longrange):
    """Oracle: a byte count. Filler never says "key", so every key-bearing byte is known."""
    assert longrange.data.count(b"key") == len(longrange.doc_offsets) + len(
        longrange.recall_offsets)
    assert len(set(longrange.doc_keys.tolist())) > 4  # keys vary between documents


def test_split_by_documents_rebases_offsets(longrange):
    """Oracle: each part's recorded recall offsets still point at the key word in its bytes."""
    train, val = longrange.split(0.25)
    assert len(train.doc_offsets) == 18 and len(val.doc_offsets) == 6
    assert val.data.startswith(b"key: ") and train.data + b"\n\n" + val.data == longrange.data
    for part in (train, val):
        for off, k in zip(part.recall_offsets.tolist(), part.recall_keys.tolist()):
            assert part.data[off : off + len(KEYS[k])].decode() == KEYS[k]
    with pytest.raises(ScredgeError, match="cannot split"):
        longrange.split(0.001)


def test_split_tail_at_a_blank_line():
    """Oracle: hand-made paragraphs; the cut lands on the blank line before the tail."""
    data = b"\n\n".join(bytes([65 + i]) * 50 for i in range(10))  # 10 paragraphs of 50 bytes
    train, val = split(data, 0.18)
    assert train + b"\n\n" + val == data and val == data[-(2 * 50 + 2):]
    assert split(data, 0.18) == (train, val)
    with pytest.raises(ScredgeError, match="validation fraction"):
        split(data, 1.0)


def test_load_text_folder(tmp_path):
    """Oracle: the files this test wrote, in sorted path order, joined with a blank line;
    other suffixes are ignored."""
    (tmp_path / "b").mkdir()
    files = {"a.md": "alpha " * 800, "b/c.txt": "gamma " * 800, "b/d.txt": "delta " * 800}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "b" / "e.bin").write_bytes(bytes(range(256)))
    assert load_text(tmp_path) == "\n\n".join(files[k] for k in sorted(files)).encode()
    assert load_text(tmp_path / "a.md") == files["a.md"].encode()


def test_non_ascii_text_is_text():
    """Oracle: UTF-8 prose in other scripts is text, not binary."""
    check_text("Grüße, 世界! Ἀθῆναι — ça va.\n".encode() * 100, "utf8")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no text files"),
        (b"text\x00" * 2000, "NUL"),
        (bytes(np.random.default_rng(0).integers(128, 256, 8000, dtype=np.uint8)), "binary"),
        (b"too short", "too little text"),
    ],
)
def test_load_text_refuses_bad_input(tmp_path, content, needle):
    """Oracle: the project's message for an empty folder, binary data and too little text."""
    if content is not None:
        (tmp_path / "x.txt").write_bytes(content)
    with pytest.raises(ScredgeError, match=needle):
        load_text(tmp_path)


def test_load_text_missing_path(tmp_path):
    """Oracle: a path that does not exist is named in the error."""
    with pytest.raises(ScredgeError, match="not found"):
        load_text(tmp_path / "nope.txt")


def test_corpus_and_train_settings_import_without_torch():
    """Oracle: a fresh interpreter's sys.modules; the CLI and the data side stay torch-free."""
    import subprocess
    import sys

    code = ("import sys, scredge.cli, scredge.ref.corpus, scredge.ref.train_config; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
