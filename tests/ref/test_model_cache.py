"""The reference model's call contract (SCR_SPEC section 3). Oracle: one full call over the
whole sequence; chunked prefill and token-by-token decode must reproduce its logits."""

from __future__ import annotations

import pytest
import torch

from scredge.errors import ScredgeError
from scredge.ref import ModelState, build_model

TOL = {"rtol": 1e-5, "atol": 1e-5}


def run_in_chunks(model, ids, sizes, start=0):
    """Feed ids [B,T] in consecutive chunks, threading the state; -> logits [B,T,V], state."""
    B = ids.shape[0]
    state, outs, pos = None, [], start
    for size in sizes:
        chunk = ids[:, pos - start:pos - start + size]
        positions = torch.arange(pos, pos + size).expand(B, size)
        logits, state = model(chunk, positions, state)
        outs.append(logits)
        pos += size
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("window", [None, 1, 5, 16])
def test_chunked_prefill_and_decode_equal_one_call(micro, window):
    """T = 60 is far longer than the windows 1, 5 and 16."""
    model = build_model(micro.with_(window=window), seed=1)
    ids = torch.randint(0, 256, (2, 60), generator=torch.Generator().manual_seed(0))
    full, full_state = run_in_chunks(model, ids, [60])
    chunked, chunked_state = run_in_chunks(model, ids, [13, 1, 30, 16])
    decoded, decoded_state = run_in_chunks(model, ids, [1] * 60)
    torch.testing.assert_close(chunked, full, **TOL)
    torch.testing.assert_close(decoded, full, **TOL)
    for state in (chunked_state, decoded_state):
        for i in micro.scr_layers:
            torch.testing.assert_close(state.scr_num[i], full_state.scr_num[i], **TOL)
            torch.testing.assert_close(state.scr_den[i], full_state.scr_den[i], **TOL)
        for a, b in zip(state.keys + state.values, full_state.keys + full_state.values):
            torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize(("window", "past", "new", "kept"),
                         [(8, 0, 3, 3), (8, 5, 3, 7), (8, 7, 1, 7), (1, 0, 4, 0), (None, 9, 4, 13)])
def test_present_keeps_the_last_w_minus_1_keys(micro, window, past, new, kept):
    """Oracle: P' = min(P+T, W-1), and the kept keys are the newest ones."""
    model = build_model(micro.with_(window=window), seed=2)
    ids = torch.randint(0, 256, (1, past + new), generator=torch.Generator().manual_seed(1))
    _, state = run_in_chunks(model, ids, [past, new] if past else [new])
    _, whole = run_in_chunks(model, ids, [past + new]) if window is None else (None, None)
    assert state.keys[0].shape == (1, micro.n_kv_heads, kept, micro.head_dim)
    assert state.values[1].shape[2] == kept
    if whole is not None:
        torch.testing.assert_close(state.keys[0], whole.keys[0], **TOL)


def test_window_at_least_the_sequence_equals_full_attention(micro):
    """Oracle: window = None on the same weights; identical masks give identical numbers."""
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(2))
    pos = torch.arange(12).expand(2, 12)
    windowed, _ = build_model(micro.with_(window=12), seed=3)(ids, pos)
    full, _ = build_model(micro.with_(window=None), seed=3)(ids, pos)
    torch.testing.assert_close(windowed, full, rtol=0, atol=0)


def test_gamma_zero_is_exactly_the_plain_transformer(micro):
    """Oracle: the same weights with scr_layers = [] (SCR_SPEC section 1)."""
    scr = build_model(micro, seed=4, gamma=0.0)
    plain = build_model(micro.with_(scr_layers=()), seed=0)
    plain.load_state_dict({k: v for k, v in scr.state_dict().items() if ".scr." not in k})
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(3))
    a, _ = run_in_chunks(scr, ids, [11, 9])
    b, _ = run_in_chunks(plain, ids, [11, 9])
    assert torch.equal(a, b)
    # and gamma != 0 really changes the output: the SCR path is exercised
    c, _ = run_in_chunks(build_model(micro, seed=4, gamma=0.1), ids, [20])
    assert (c - b).abs().max() > 1e-3


def test_logits_are_float32_and_finite(micro):
    model = build_model(micro, seed=5)
    logits, _ = model(torch.zeros(1, 3, dtype=torch.int64), torch.arange(3).view(1, 3))
    assert logits.dtype == torch.float32 and logits.shape == (1, 3, 256)
    assert torch.isfinite(logits).all()


def test_state_errors(micro):
    model = build_model(micro, seed=6)
    ids = torch.zeros(1, 1, dtype=torch.int64)
    too_long = ModelState.empty(micro, 1)
    too_long.keys = [torch.zeros(1, 2, 8, 8) for _ in range(2)]
    with pytest.raises(ScredgeError, match=r"P = 8(.|\n)*window - 1 = 7"):
        model(ids, ids, too_long)
    with pytest.raises(ScredgeError, match="batch"):
        model(ids, ids, ModelState.empty(micro, 3))
    with pytest.raises(ScredgeError, match="SCR layers"):
        model(ids, ids, ModelState.empty(micro.with_(scr_layers=(1,)), 1))
