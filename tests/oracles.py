"""Independent oracles shared by tests: written here from the spec text, not from our code."""

from __future__ import annotations

import numpy as np

KAPPA = 8.0


def realign_spec_f64(h, m_prev, num_in, den_in, w_r, b_r, w_g, b_g, kappa=KAPPA):
    """SCR_SPEC section 2, token by token, in float64: the independent oracle."""
    h, m_prev = h.astype(np.float64), m_prev.astype(np.float64)
    num, den = num_in.astype(np.float64).copy(), den_in.astype(np.float64).copy()
    w_r, b_r, w_g, b_g = (a.astype(np.float64) for a in (w_r, b_r, w_g, b_g))
    m = np.empty_like(h)
    for t in range(h.shape[1]):
        ht = h[:, t]  # [B,D]
        r = kappa * np.tanh((ht @ w_r + b_r) / kappa)  # [B]
        e = np.exp(r - kappa)
        num = num + e[:, None] * ht
        den = den + e[:, None]
        c = num / den
        beta = 1.0 / (1.0 + np.exp(-(ht @ w_g + b_g)))
        m[:, t] = (1 - beta)[:, None] * m_prev[:, t] + beta[:, None] * c
    return m, num, den


def random_inputs(rng, B, T, D, h_scale=1.0, w_scale=0.3, carry=True):
    h = rng.normal(size=(B, T, D)) * h_scale
    m_prev = rng.normal(size=(B, T, D))
    num = rng.normal(size=(B, D)) if carry else np.zeros((B, D))
    den = rng.uniform(0.5, 2.0, size=(B, 1)) if carry else np.zeros((B, 1))
    w_r, w_g = rng.normal(size=D) * w_scale, rng.normal(size=D) * w_scale
    b_r, b_g = rng.normal(size=1), rng.normal(size=1)
    return [np.asarray(a, np.float32) for a in (h, m_prev, num, den, w_r, b_r, w_g, b_g)]


def run_in_chunks(run, arrays, sizes):
    """SCR_SPEC's chunking: `run(arrays) -> (m, num, den)` called on consecutive token chunks
    of `sizes`, each call starting from the (num, den) the last one returned; (m of every
    token, the last num, den), to compare with one call over all tokens."""
    num, den, ms, start = arrays[2], arrays[3], [], 0
    for size in sizes:
        m, num, den = run([arrays[0][:, start:start + size], arrays[1][:, start:start + size],
                           num, den, *arrays[4:]])
        ms.append(m)
        start += size
    return np.concatenate(ms, 1), num, den
