"""The logits tier's comparison (core/tiers.py compare_logits), taken a few rows at a time.
Oracle: the same measures computed over every row at once in float64, written out here,
equal bit for bit; and the float64 working memory bounded by the chunk, not the rows."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from scredge import tiers
from scredge.tiers import compare_logits, logits_thresholds


def whole(ref: np.ndarray, got: np.ndarray, margin: float) -> tuple:
    """max|diff|, KL max, top-1 and positions counted, over all rows in one go."""
    r = np.asarray(ref, np.float64).reshape(-1, ref.shape[-1])
    g = np.asarray(got, np.float64).reshape(-1, ref.shape[-1])

    def log_softmax(x):
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    lr, lg = log_softmax(r), log_softmax(g)
    kl = float(np.max(np.sum(np.exp(lr) * (lr - lg), axis=-1)))
    top2 = np.sort(r, axis=-1)[:, -2:]
    decisive = top2[:, 1] - top2[:, 0] >= margin
    n = int(decisive.sum())
    top1 = float((g.argmax(-1)[decisive] == r.argmax(-1)[decisive]).mean()) if n else 1.0
    return float(np.abs(r - g).max()), max(kl, 0.0), top1, n


def logits_pair(shape, seed: int, noise: float):
    rng = np.random.default_rng(seed)
    ref = (rng.normal(size=shape) * 4).astype(np.float32)
    got = (ref + rng.normal(size=shape) * noise).astype(np.float32)
    return ref, got


@pytest.mark.parametrize("chunk_bytes", [8 * 300, 8 * 1000 * 3, tiers.COMPARE_CHUNK_BYTES])
@pytest.mark.parametrize("noise", [1e-4, 0.5])  # passing, and failing with top-1 flips
def test_chunked_equals_whole(monkeypatch, chunk_bytes, noise):
    """Chunks of 1 row, of 3 rows (7 x 3 = 21 rows: the last chunk short) and all rows
    give the numbers of the whole-array computation exactly, and the same verdict."""
    monkeypatch.setattr(tiers, "COMPARE_CHUNK_BYTES", chunk_bytes)
    ref, got = logits_pair((3, 7, 1000), 0, noise)
    for dtype in ("float32", "float16"):
        th = logits_thresholds(dtype)
        rep = compare_logits(ref, got, th)
        max_abs, kl, top1, n = whole(ref, got, th.margin)
        assert (rep.max_abs, rep.kl_max, rep.top1, rep.decisive) == (max_abs, kl, top1, n)
        assert (rep.near_ties, rep.positions) == (21 - n, 21)
        assert rep.passed == (max_abs <= (th.max_abs or np.inf) and kl <= th.kl
                              and top1 >= th.top1)
    assert noise < 0.01 or not rep.passed  # the noisy case does fail


def test_non_finite_backend_logits_fail():
    ref, got = logits_pair((2, 3, 50), 1, 1e-4)
    got[1, 2, 7] = np.nan
    rep = compare_logits(ref, got, logits_thresholds("float32"))
    assert not rep.passed and rep.failures == ["backend logits contain NaN or Inf"]


def test_working_memory_is_a_chunk_not_every_row():
    """A float16 export's prefill logits (58 positions x 49,152): the float64 copies of
    every row (23 MB each, 131 MB traced at once before chunking) were the verification's
    peak; now ~6 MB. numpy reports its buffers to tracemalloc."""
    ref, got = logits_pair((2, 29, 49152), 2, 1e-3)
    tracemalloc.start()
    try:
        compare_logits(ref, got, logits_thresholds("float16"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    row64 = ref[0, 0].size * 8 * ref.shape[0] * ref.shape[1]  # all rows in float64
    assert peak < row64 / 2, f"{peak / 2**20:.1f} MiB traced, one float64 copy of " \
                             f"every row is {row64 / 2**20:.1f} MiB"
