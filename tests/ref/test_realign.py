"""`scr.Realign` reference. Oracle: the float64 NumPy loop of tests/oracles.py, written
from the text of SCR_SPEC section 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oracles import KAPPA, random_inputs, realign_spec_f64, run_in_chunks
from scredge.ref import realign, realign_reference


def run_op(arrays, dtype=torch.float32, kappa=KAPPA):
    t = [torch.from_numpy(a) for a in arrays]
    t[0], t[1] = t[0].to(dtype), t[1].to(dtype)
    return realign(*t, kappa)


@pytest.mark.parametrize(("B", "T", "D", "carry"), [(1, 1, 4, True), (2, 37, 16, True),
                                                    (3, 300, 8, False), (1, 1, 64, False)])
def test_matches_spec_float32(B, T, D, carry):
    """Op tier, float32: max abs error <= 1e-5 x scale."""
    arrays = random_inputs(np.random.default_rng(T), B, T, D, carry=carry)
    m, num, den = run_op(arrays)
    m_ref, num_ref, den_ref = realign_spec_f64(*arrays)
    scale = max(1.0, np.abs(arrays[0]).max(), np.abs(arrays[1]).max())
    assert m.dtype == torch.float32 and num.dtype == torch.float32 and den.shape == (B, 1)
    np.testing.assert_allclose(m.numpy(), m_ref, atol=1e-5 * scale, rtol=0)
    np.testing.assert_allclose(den.numpy(), den_ref, rtol=1e-5, atol=0)
    np.testing.assert_allclose(num.numpy(), num_ref, rtol=1e-5, atol=1e-5 * np.abs(num_ref).max())


def test_float16_inputs_accumulate_in_float32():
    """Op tier, float16: m in float16 within 2e-3 x scale; carries stay float32."""
    arrays = random_inputs(np.random.default_rng(3), 2, 200, 32)
    arrays[0] = arrays[0].astype(np.float16).astype(np.float32)  # what the fp16 op sees
    arrays[1] = arrays[1].astype(np.float16).astype(np.float32)
    m, num, den = run_op(arrays, dtype=torch.float16)
    assert m.dtype == torch.float16 and num.dtype == torch.float32 and den.dtype == torch.float32
    m_ref, num_ref, _ = realign_spec_f64(*arrays)
    scale = max(1.0, np.abs(arrays[0]).max())
    np.testing.assert_allclose(m.float().numpy(), m_ref, atol=2e-3 * scale, rtol=0)
    np.testing.assert_allclose(num.numpy(), num_ref, rtol=1e-5, atol=1e-5 * np.abs(num_ref).max())


def test_chunking_invariance():
    """Oracle: one call over all tokens. Any split threading (num, den) must agree."""
    arrays = random_inputs(np.random.default_rng(5), 2, 50, 16, carry=False)
    m_all, num_all, den_all = (t.numpy() for t in run_op(arrays))
    m, num, den = run_in_chunks(lambda a: [t.numpy() for t in run_op(a)], arrays, (7, 1, 20, 22))
    np.testing.assert_allclose(m, m_all, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(num, num_all, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(den, den_all, rtol=1e-5, atol=0.0)


def test_empty_carry_is_zero():
    """Oracle: the spec's 'empty carry is num = 0, den = 0' — the first token's c is h_0."""
    arrays = random_inputs(np.random.default_rng(6), 2, 1, 8, carry=False)
    arrays[6][:] = 0.0
    arrays[7][:] = 50.0  # beta -> 1 so m -> c_0
    m, _, _ = run_op(arrays)
    np.testing.assert_allclose(m.numpy(), arrays[0], rtol=1e-6, atol=1e-6)


def test_finite_for_large_values_and_a_million_tokens():
    """|h| up to 6e4 and T = 1e6 (in chunks): no NaN or Inf, and every m stays a convex
    combination (so |m| <= max |h|, |m_prev|) — true of the exact math by construction."""
    rng = np.random.default_rng(7)
    D, chunk = 8, 125_000
    w = torch.from_numpy(rng.normal(size=D).astype(np.float32) * 50)  # saturates tanh
    b = torch.tensor([3.0])
    num, den = torch.zeros(1, D), torch.zeros(1, 1)
    for _ in range(1_000_000 // chunk):
        h = torch.from_numpy(rng.uniform(-6e4, 6e4, size=(1, chunk, D)).astype(np.float32))
        m_prev = torch.from_numpy(rng.uniform(-6e4, 6e4, size=(1, chunk, D)).astype(np.float32))
        m, num, den = realign(h, m_prev, num, den, w, b, -w, b, KAPPA)
        assert torch.isfinite(m).all() and torch.isfinite(num).all() and torch.isfinite(den).all()
        assert m.abs().max() <= 6e4 * (1 + 1e-5)
    assert den.item() > 0
    # float16 inputs at the edge of its range
    h16 = torch.full((1, 1000, D), 6e4, dtype=torch.float16)
    m16, _, _ = realign(h16, -h16, torch.zeros(1, D), torch.zeros(1, 1), w, b, w, b, KAPPA)
    assert torch.isfinite(m16).all()


def test_custom_op_registration_and_gradients():
    """Oracle: torch.library.opcheck (fake tensor, schema, autograd registration), and
    autograd through the plain reference function."""
    arrays = random_inputs(np.random.default_rng(8), 2, 9, 8)
    args = [torch.from_numpy(a).requires_grad_() for a in arrays]
    torch.library.opcheck(torch.ops.scr.realign.default, (*args, KAPPA))
    out = realign(*args, KAPPA)
    loss = sum((o * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in out)
    grads = torch.autograd.grad(loss, args)
    ref_args = [a.detach().clone().requires_grad_() for a in args]
    ref_out = realign_reference(*ref_args, KAPPA)
    ref_loss = sum((o * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in ref_out)
    for g, r in zip(grads, torch.autograd.grad(ref_loss, ref_args)):
        torch.testing.assert_close(g, r)
