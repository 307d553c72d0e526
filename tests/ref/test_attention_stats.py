"""Attention capture and the head deviation (scredge.ref.attention_stats)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from scredge.config import SCRConfig  # noqa: E402
from scredge.ref.attention_stats import (  # noqa: E402
    capture_attention,
    head_deviation,
    js_divergence,
)
from scredge.ref.model import build_model  # noqa: E402

# GQA (2 query heads per KV head), a window shorter than the text, SCR in one layer
CONFIG = SCRConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=48,
                   window=5, scr_layers=(1,))


def independent_probs(model, ids):
    """Per layer [B,H,T,T]: softmax(Q K^T / sqrt(d) + mask) written out head by head, from
    each attention's input (a forward pre-hook) and its weights, with our own rotary."""
    c = model.config
    inputs = []
    hooks = [b.self_attn.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
             for b in model.model.layers]
    with torch.no_grad():
        model(ids, torch.arange(ids.shape[1])[None])
    for h in hooks:
        h.remove()
    T, dh = ids.shape[1], c.head_dim
    freqs = torch.arange(T, dtype=torch.float64)[:, None] / c.rope_theta ** (
        torch.arange(0, dh, 2, dtype=torch.float64) / dh)  # [T, dh/2]
    cos, sin = freqs.cos().repeat(1, 2), freqs.sin().repeat(1, 2)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    additive = torch.where((j <= i) & (j > i - c.window), 0.0, -math.inf).double()
    out = []
    for x, block in zip(inputs, model.model.layers):
        attn, x = block.self_attn, x[0].double()
        q = (x @ attn.q_proj.weight.double().T).view(T, c.n_heads, dh)
        k = (x @ attn.k_proj.weight.double().T).view(T, c.n_kv_heads, dh)

        def rope(t):
            half = t.shape[-1] // 2
            rotated = torch.cat((-t[..., half:], t[..., :half]), -1)
            return t * cos[:, None] + rotated * sin[:, None]

        q, k = rope(q), rope(k)
        heads = [torch.softmax(q[:, h] @ k[:, h // c.kv_groups].T / math.sqrt(dh) + additive,
                               dim=-1) for h in range(c.n_heads)]
        out.append(torch.stack(heads)[None])  # [1,H,T,T]
    return out


def test_captured_probabilities_are_the_attention_softmax():
    """Oracle: an independent per-head softmax(QK^T/sqrt(d) + causal/window mask) from the
    layer inputs and weights; and capturing leaves the logits bit-identical."""
    model = build_model(CONFIG, seed=3, std=0.2)
    ids = torch.randint(0, CONFIG.vocab_size, (1, 11), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(11)[None]
    with torch.no_grad():
        plain, _ = model(ids, pos)
        with capture_attention(model) as captured:
            logits, _ = model(ids, pos)
    assert torch.equal(plain, logits)
    assert all(b.self_attn.capture is None for b in model.model.layers)  # closed again
    expected = independent_probs(model, ids)
    assert len(captured) == CONFIG.n_layers
    for calls, want in zip(captured, expected):
        assert len(calls) == 1 and calls[0].dtype == torch.float32
        torch.testing.assert_close(calls[0].double(), want, atol=1e-6, rtol=0)
        assert (calls[0][..., want == 0] == 0).all()  # exactly 0 outside the window


def test_js_divergence_closed_forms():
    """Oracle: JSD(p, p) = 0; disjoint supports give ln 2; [1,0] vs [1/2,1/2] by hand;
    random distributions (with zeros) stay within [0, ln 2]."""
    p = torch.tensor([[0.2, 0.3, 0.5, 0.0]], dtype=torch.float64)
    assert js_divergence(p, p).item() == 0.0
    disjoint = js_divergence(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.5, 0.5]))
    assert disjoint.item() == pytest.approx(math.log(2), abs=1e-7)
    half = js_divergence(torch.tensor([1.0, 0.0]).double(), torch.tensor([0.5, 0.5]).double())
    by_hand = 0.5 * math.log(1 / 0.75) + 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2))
    assert half.item() == pytest.approx(by_hand, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(200, 7, generator=g), torch.rand(200, 7, generator=g)
    a[a < 0.3], b[b < 0.3] = 0, 0
    a[:, 0] += 1e-3
    b[:, 1] += 1e-3
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    values = js_divergence(a.double(), b.double())
    assert values.min() >= 0 and values.max() <= math.log(2) + 1e-12


def test_head_deviation_definition_and_chunking():
    """Oracle: the definition applied to the independent probabilities (head-average, JSD of
    consecutive layers, mean over positions); chunked passes give the same value; layers
    whose queries are zero all attend uniformly to the visible keys, so deviation 0."""
    model = build_model(CONFIG, seed=3, std=0.2)
    ids = torch.randint(0, CONFIG.vocab_size, (1, 11), generator=torch.Generator().manual_seed(1))
    rows = [p.mean(dim=1) for p in independent_probs(model, ids)]  # [1,T,T]
    want = [js_divergence(rows[i], rows[i + 1]).mean().item() for i in range(len(rows) - 1)]
    whole = head_deviation(model, ids, chunk=64)
    chunked = head_deviation(model, ids, chunk=3)
    assert whole.per_layer_pair == pytest.approx(want, abs=1e-6)
    assert chunked.per_layer_pair == pytest.approx(want, abs=1e-6)
    assert whole.mean == pytest.approx(sum(want) / len(want), abs=1e-6) and whole.positions == 11
    assert 0 < whole.mean <= math.log(2)
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.q_proj.weight.zero_()
    assert head_deviation(model, ids, chunk=4).per_layer_pair == (0.0, 0.0)
