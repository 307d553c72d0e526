"""Byte corpora for `scredge train`: built-in prose, a user's text, a synthetic long-range set.

Torch-free (numpy only). The tokenizer is bytes, so every corpus is `bytes`.

- `prose_corpus()`: English prose with code from Python's own `pydoc_data.topics`, so
  training needs no download. It is whatever this Python ships, so it differs between
  Python versions; `scredge train` logs its sha256.
- `load_text(path)`: a user's file, or every *.txt / *.md under a folder; binary or
  near-empty input is refused, because a byte LM would happily "learn" it.
- `LongRangeCorpus`: seeded documents whose start ("key: amber.") decides bytes
  hundreds to thousands of bytes later ("The key is amber."), far past a sliding
  attention window. It records the offset of every recalled word, so an evaluation can
  score exactly the bytes whose prediction needs information from outside the window.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scredge.errors import ScredgeError
from scredge.files import read_bytes_limited
from scredge.limits import MAX_TRAIN_DATA_BYTES

TEXT_SUFFIXES = (".txt", ".md")
MIN_TEXT_BYTES = 4096  # enough for a train part and a validation part of a few windows
MAX_NONTEXT_FRACTION = 0.30

# Distinct first letters: once the first byte of a recalled word is right, the rest is
# determined, so a model without the document start can do no better than ln(16) nats
# per recall (a uniform guess of the first byte), and one with it can reach ~0.
KEYS = ("amber", "birch", "cobalt", "delta", "ember", "fjord", "garnet", "harbor",
        "indigo", "jasper", "kestrel", "lumen", "maple", "nectar", "onyx", "pebble")
HEADER = "key: {}.\n"
RECALL_PREFIX = "The key is "  # fixed, so the position of a recalled word is always known
DOC_SEPARATOR = "\n\n"


# ---- prose --------------------------------------------------------------------------
def prose_corpus() -> bytes:
    """Python's documentation topics (~460 KB of UTF-8), in sorted topic order."""
    from pydoc_data.topics import topics

    return DOC_SEPARATOR.join(topics[k] for k in sorted(topics)).encode("utf-8")


def prose_sentences() -> list[str]:
    """Plain ASCII prose sentences of the prose corpus, sorted and de-duplicated.

    Paragraphs with mixed indentation or a `>>>` prompt (code) are skipped, and so are
    sentences with markup characters or the word "key" (which belongs to the long-range
    corpus's own sentences alone).
    """
    out: set[str] = set()
    for para in prose_corpus().decode("utf-8").split("\n\n"):
        lines = [line for line in para.split("\n") if line.strip()]
        if not lines or ">>>" in para:
            continue
        if len({len(line) - len(line.lstrip()) for line in lines}) > 1:
            continue
        flat = " ".join(line.strip() for line in lines)
        for s in re.split(r"(?<=[.!?])\s+", flat):
            if (30 <= len(s) <= 200 and s[0].isupper() and s[-1] in ".!?" and s.isascii()
                    and "key" not in s.lower() and not _MARKUP.search(s)):
                out.add(s)
    return sorted(out)


_MARKUP = re.compile(r"[*`=|<>\[\]{}\\#@$%^~_]")


# ---- a user's text ------------------------------------------------------------------
def load_text(path: str | Path, *, min_bytes: int = MIN_TEXT_BYTES) -> bytes:
    """A text file, or every *.txt / *.md under a folder (sorted, joined with a blank line)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise ScredgeError("no text files in the data folder", received=str(path),
                               expected=f"files ending in {' or '.join(TEXT_SUFFIXES)}"
                                        " (searched recursively)",
                               fix="point --data at a text file or a folder of .txt/.md files")
    elif path.is_file():
        files = [path]
    else:
        raise ScredgeError("data path not found", received=str(path),
                           fix="check the path given to --data")
    parts = []
    for f in files:
        data = read_bytes_limited(f, "the training data", MAX_TRAIN_DATA_BYTES)
        check_text(data, str(f))
        parts.append(data)
    data = DOC_SEPARATOR.encode().join(parts)
    if len(data.strip()) < min_bytes:
        raise ScredgeError("too little text to train on", received=f"{len(data)} bytes in "
                           f"{len(files)} file(s) under {path}",
                           expected=f"at least {min_bytes} bytes (a training part and a "
                                    "validation part of several windows each)",
                           fix="add more text, or use a built-in corpus (--corpus prose)")
    return data


def check_text(data: bytes, source: str) -> None:
    """Refuse binary data: any NUL byte, or too many control or invalid UTF-8 bytes."""
    if b"\x00" in data:
        raise ScredgeError("data file looks binary (it contains NUL bytes)", received=source,
                           expected="a UTF-8 text file",
                           fix="remove it from the data folder, or convert it to text")
    if not data:
        return
    arr = np.frombuffer(data, dtype=np.uint8)
    control = (arr < 32) & ~np.isin(arr, (9, 10, 12, 13))  # tab, newline, form feed, CR
    invalid = data.decode("utf-8", errors="replace").count("\ufffd")
    fraction = (int(control.sum()) + int((arr == 127).sum()) + invalid) / len(data)
    if fraction > MAX_NONTEXT_FRACTION:
        raise ScredgeError("data file looks binary", received=f"{source}: {fraction:.0%} of "
                           "its bytes are control characters or invalid UTF-8",
                           expected=f"at most {MAX_NONTEXT_FRACTION:.0%}",
                           fix="remove it from the data folder, or convert it to text")


# ---- train / validation split -------------------------------------------------------
def split(data: bytes, val_fraction: float) -> tuple[bytes, bytes]:
    """(train, val): the tail is validation, cut at the last blank line before the cut point
    when one lies in the tail's first half (so a document is not split), else exactly."""
    if not 0 < val_fraction < 1:
        raise ScredgeError("invalid validation fraction", received=val_fraction,
                           expected="a number in (0, 1), e.g. 0.05")
    cut = len(data) - max(1, round(len(data) * val_fraction))
    boundary = data.rfind(DOC_SEPARATOR.encode(), 0, cut)
    if boundary > 0 and cut - boundary < (len(data) - cut) // 2:
        cut = boundary
    return data[:cut], data[cut:].lstrip(b"\n")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the synthetic long-range corpus ------------------------------------------------
@dataclass(frozen=True)
class LongRangeCorpus:
    """Seeded documents where the key stated at the start governs recalls far later.

    Document: `key: <word>.\\n` then prose sentences (from `prose_sentences()`), with
    `The key is <word>.` inserted whenever at least `gap` bytes (drawn per recall from
    [gap_min, gap_max]) separate the next word from the previous mention of the key.
    Each recall therefore lies >= gap_min bytes after the previous mention, so a model
    whose attention window is shorter than gap_min must carry the key some other way.
    Documents are joined with a blank line. All text is ASCII: char offsets = byte offsets.
    """

    data: bytes
    keys: tuple[str, ...]
    doc_offsets: np.ndarray  # [N] int64, first byte of each document
    doc_keys: np.ndarray  # [N] int64, index into `keys`
    recall_offsets: np.ndarray  # [R] int64, first byte of each recalled word
    recall_keys: np.ndarray  # [R] int64, index into `keys` (always its document's key)
    recall_gaps: np.ndarray  # [R] int64, bytes from the previous mention of the key
    settings: dict = field(default_factory=dict)

    @classmethod
    def generate(cls, seed: int = 0, n_docs: int = 1000, doc_bytes: int = 4096,
                 gap_min: int = 300, gap_max: int = 600,
                 keys: tuple[str, ...] = KEYS) -> LongRangeCorpus:
        _check_settings(n_docs, doc_bytes, gap_min, gap_max, keys)
        rng = np.random.default_rng(seed)
        sentences = prose_sentences()
        pieces: list[str] = []
        doc_offsets, doc_keys, offsets, recall_keys, gaps = [], [], [], [], []
        pos = 0
        for d in range(n_docs):
            if d:
                pieces.append(DOC_SEPARATOR)
                pos += len(DOC_SEPARATOR)
            k = int(rng.integers(len(keys)))
            doc_offsets.append(pos)
            doc_keys.append(k)
            header = HEADER.format(keys[k])
            last_mention = pos + header.index(keys[k])
            pieces.append(header)
            pos += len(header)
            end = doc_offsets[-1] + doc_bytes
            gap = int(rng.integers(gap_min, gap_max + 1))
            sep = ""
            while pos < end:
                word_at = pos + len(sep) + len(RECALL_PREFIX)
                if word_at - last_mention >= gap:
                    sentence = f"{RECALL_PREFIX}{keys[k]}."
                    offsets.append(word_at)
                    recall_keys.append(k)
                    gaps.append(word_at - last_mention)
                    last_mention = word_at
                    gap = int(rng.integers(gap_min, gap_max + 1))
                else:
                    sentence = sentences[int(rng.integers(len(sentences)))]
                pieces.append(sep + sentence)
                pos += len(sep) + len(sentence)
                sep = "\n" if rng.random() < 0.2 else " "
        text = "".join(pieces)
        assert len(text) == pos and text.isascii()
        i64 = np.int64
        return cls(text.encode("ascii"), tuple(keys), np.array(doc_offsets, i64),
                   np.array(doc_keys, i64), np.array(offsets, i64),
                   np.array(recall_keys, i64), np.array(gaps, i64),
                   dict(seed=seed, n_docs=n_docs, doc_bytes=doc_bytes, gap_min=gap_min,
                        gap_max=gap_max, keys=list(keys)))

    def split(self, val_fraction: float) -> tuple[LongRangeCorpus, LongRangeCorpus]:
        """(train, val) by whole documents: the last documents are validation."""
        n = len(self.doc_offsets)
        n_val = round(n * val_fraction) if 0 < val_fraction < 1 else 0
        if not 1 <= n_val < n:
            raise ScredgeError("cannot split the long-range corpus by documents",
                               received=f"{n} documents, validation fraction {val_fraction}",
                               expected="a fraction in (0, 1) leaving at least one "
                                        "document on each side",
                               fix="generate more documents or change the fraction")
        cut = int(self.doc_offsets[n - n_val])
        return self._part(0, cut), self._part(cut, len(self.data))

    def _part(self, start: int, stop: int) -> LongRangeCorpus:
        data = self.data[start:stop]
        if data.endswith(DOC_SEPARATOR.encode()):
            data = data[: -len(DOC_SEPARATOR)]
        docs = (self.doc_offsets >= start) & (self.doc_offsets < stop)
        recalls = (self.recall_offsets >= start) & (self.recall_offsets < stop)
        return LongRangeCorpus(data, self.keys, self.doc_offsets[docs] - start,
                               self.doc_keys[docs], self.recall_offsets[recalls] - start,
                               self.recall_keys[recalls], self.recall_gaps[recalls],
                               dict(self.settings, part=[start, stop]))

    def describe(self) -> dict:
        return dict(self.settings, bytes=len(self.data), documents=len(self.doc_offsets),
                    recalls=len(self.recall_offsets), sha256=sha256(self.data))


def _check_settings(n_docs, doc_bytes, gap_min, gap_max, keys) -> None:
    if n_docs < 1 or doc_bytes < 1:
        raise ScredgeError("invalid long-range corpus size",
                           received=f"n_docs={n_docs}, doc_bytes={doc_bytes}",
                           expected="both >= 1")
    if not 1 <= gap_min <= gap_max:
        raise ScredgeError("invalid recall gap", received=f"[{gap_min}, {gap_max}]",
                           expected="1 <= gap_min <= gap_max (bytes), e.g. 300,600")
    if len(keys) < 2 or len({k[0] for k in keys}) != len(keys) or not all(
            k.isascii() and k.isalpha() for k in keys):
        raise ScredgeError("invalid keys", received=list(keys),
                           expected="at least 2 ASCII words with distinct first letters")


# ---- what `scredge train` trains on ------------------------------------------------------
def parse_gap(text: str) -> tuple[int, int]:
    """--recall-gap MIN,MAX."""
    try:
        a, b = (int(t) for t in text.split(","))
    except ValueError:
        raise ScredgeError("invalid --recall-gap", received=repr(text),
                           expected="two integers MIN,MAX like 300,600") from None
    return a, b


def training_data(*, data: str | Path | None = None, corpus: str = "prose",
                  val_fraction: float = 0.05, corpus_seed: int = 0, docs: int = 1000,
                  doc_bytes: int = 4096, recall_gap: str = "300,600"
                  ) -> tuple[bytes, bytes, dict]:
    """(train bytes, validation bytes, a description for the log): a text file or folder
    (`data`), else the built-in `corpus` (prose: Python's docs; longrange: key/recall)."""
    import platform

    if data is not None:
        train, val = split(load_text(data), val_fraction)
        return train, val, {"kind": "text", "path": str(Path(data).absolute())}
    if corpus == "longrange":
        gap_min, gap_max = parse_gap(recall_gap)
        full = LongRangeCorpus.generate(seed=corpus_seed, n_docs=docs, doc_bytes=doc_bytes,
                                        gap_min=gap_min, gap_max=gap_max)
        train_part, val_part = full.split(val_fraction)
        return train_part.data, val_part.data, {"kind": "longrange", **full.describe()}
    train, val = split(prose_corpus(), val_fraction)
    return train, val, {"kind": "prose", "source": "pydoc_data.topics",
                        "python": platform.python_version()}
