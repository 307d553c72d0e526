"""The quantized tier's arithmetic (core/quantized_tier.py), torch-free, on hand-made
logits. Oracles: perplexity = exp(-mean log p) computed by hand, SCR_SPEC section 5's
thresholds (int8 1.01 / 98 %, int4 1.05 / 90 %, near-ties under 5e-2 excluded)."""

from __future__ import annotations

import numpy as np

from scredge.quantized_tier import Heldout, PositionStats, compare, teacher_forced_stats

V = 8


def _stats(logits, targets):
    return PositionStats.from_logits(np.asarray(logits, np.float32), np.asarray(targets))


def _heldout(ref: PositionStats, n: int) -> Heldout:
    return Heldout("0" * 64, {"corpus": "test"}, np.zeros(n + 1, np.int64), ref)


def test_logprob_argmax_margin_by_hand():
    """log p of the target from a log-softmax by hand, argmax, top-2 gap."""
    logits = np.array([[2.0, 0.0, 0.0, 1.0, 0, 0, 0, 0]])
    s = _stats(logits, [3])
    expected = 1.0 - np.log(np.exp(2.0) + np.exp(1.0) + 6)
    np.testing.assert_allclose(s.logprob, [expected])
    assert s.top1.tolist() == [0] and np.isclose(s.margin[0], 1.0) and s.nonfinite == 0


def test_identical_passes_and_worse_perplexity_fails():
    """Same stats: ratio 1, top-1 100 %. A backend whose log p is 0.1 lower everywhere has
    ratio exp(0.1) = 1.105: over int4's 1.05, and the report says so."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, V)) * 3
    targets = rng.integers(0, V, 64)
    ref = _stats(logits, targets)
    rep = compare(_heldout(ref, 64), ref, 4, "g")
    assert rep.passed and np.isclose(rep.ratio, 1.0) and rep.top1 == 1.0
    worse = PositionStats(ref.logprob - 0.1, ref.top1, ref.margin)
    rep = compare(_heldout(ref, 64), worse, 4, "g")
    assert np.isclose(rep.ratio, np.exp(0.1)) and not rep.passed
    assert any("perplexity ratio" in f for f in rep.failures)


def test_near_ties_are_excluded_and_flips_count():
    """Positions with a reference margin under 5e-2 are not counted; a flip elsewhere is."""
    ref = PositionStats(np.zeros(100), np.zeros(100, np.int64),
                        np.r_[np.full(50, 0.01), np.full(50, 1.0)].astype(np.float32))
    got = PositionStats(np.zeros(100), np.r_[np.ones(50), np.zeros(49), [1]].astype(np.int64),
                        ref.margin)
    rep = compare(_heldout(ref, 100), got, 8, "g")
    assert (rep.decisive, rep.near_ties) == (50, 50) and np.isclose(rep.top1, 0.98)
    assert rep.passed  # exactly 98 % meets int8's >= 98 %


def test_non_finite_logits_fail():
    logits = np.zeros((4, V))
    logits[2, 1] = np.nan
    ref = _stats(np.eye(V)[:4] * 5, [0, 1, 2, 3])
    rep = compare(_heldout(ref, 4), _stats(logits, [0, 1, 2, 3]), 4, "g")
    assert not rep.passed and rep.nonfinite == 1


def test_chunks_thread_consecutive_positions(tmp_path):
    """The stepper sees ids[:-1] in order, in chunks, with consecutive absolute positions;
    a stepper that predicts the next id perfectly scores log p ~ 0 at every position. The
    stats survive a save/load round trip."""
    ids = np.arange(1, 12) % V
    seen = []

    def step(chunk, pos):
        seen.append((chunk[0].tolist(), pos[0].tolist()))
        nxt = np.r_[ids[pos[0] + 1]]
        return (np.eye(V)[nxt] * 50)[None]

    s = teacher_forced_stats(step, ids, chunk=4)
    assert [p for _, p in seen] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert sum((c for c, _ in seen), []) == ids[:-1].tolist()
    assert np.all(s.logprob > -1e-12) and s.top1.tolist() == ids[1:].tolist()
    h = Heldout("a" * 64, {"corpus": "test"}, ids, s)
    h.save(tmp_path / "h.npz")
    back = Heldout.load(tmp_path / "h.npz")
    assert back.source == h.source and np.array_equal(back.ref.top1, s.top1)
