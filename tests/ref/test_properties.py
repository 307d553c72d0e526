"""Property tests over shapes (B, T, D, heads, window). Oracles: the float64 spec loop for
Realign, and one full call for the model's chunking invariance."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import random_inputs, realign_spec_f64
from scredge.config import SCRConfig
from scredge.ref import build_model, realign


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 40), D=st.sampled_from([1, 2, 8, 24]),
       seed=st.integers(0, 2**16), kappa=st.sampled_from([0.5, 8.0, 30.0]))
def test_realign_matches_spec(B, T, D, seed, kappa):
    arrays = random_inputs(np.random.default_rng(seed), B, T, D)
    m, num, den = realign(*map(torch.from_numpy, arrays), kappa)
    m_ref, num_ref, den_ref = realign_spec_f64(*arrays, kappa=kappa)
    scale = max(1.0, np.abs(arrays[0]).max(), np.abs(arrays[1]).max())
    np.testing.assert_allclose(m.numpy(), m_ref, atol=1e-5 * scale, rtol=0)
    np.testing.assert_allclose(den.numpy(), den_ref, rtol=1e-5)


@st.composite
def configs(draw):
    heads = draw(st.sampled_from([1, 2, 4]))
    kv = draw(st.sampled_from([h for h in (1, 2, 4) if heads % h == 0]))
    head_dim = draw(st.sampled_from([2, 4, 8]))
    layers = draw(st.integers(1, 3))
    scr = draw(st.lists(st.integers(0, layers - 1), unique=True).map(sorted))
    window = draw(st.one_of(st.none(), st.integers(1, 12)))
    return SCRConfig(vocab_size=32, d_model=heads * head_dim, n_layers=layers, n_heads=heads,
                     n_kv_heads=kv, d_ff=16, window=window, scr_layers=tuple(scr))


@settings(max_examples=30, deadline=None)
@given(c=configs(), B=st.integers(1, 3), T=st.integers(2, 30), data=st.data())
def test_any_split_equals_one_call(c, B, T, data):
    split = data.draw(st.integers(1, T - 1))
    model = build_model(c, seed=data.draw(st.integers(0, 100)), gamma=0.5)
    ids = torch.randint(0, 32, (B, T), generator=torch.Generator().manual_seed(T))
    pos = torch.arange(T).expand(B, T)
    full, _ = model(ids, pos)
    first, state = model(ids[:, :split], pos[:, :split])
    second, _ = model(ids[:, split:], pos[:, split:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), full, rtol=1e-5, atol=1e-5)
