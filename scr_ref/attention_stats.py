"""Attention head deviation: how much the attention distributions change from a layer to
the next (the measure the SCR paper's abstract names).

For each layer, the attention rows are averaged over heads, giving per query position a
distribution over the keys it may see (causal, inside the sliding window; the reference
model's softmax puts exactly 0 elsewhere). The deviation between layers l and l+1 is the
Jensen-Shannon divergence of those two rows (natural log, so within [0, ln 2]), averaged
over query positions. The text goes through the model in chunks with the cache, as in a
chunked prefill: the same probabilities as one pass, in memory bounded by the chunk.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from scredge.errors import ScredgeError
from scredge.ref.model import ModelState, SCRForCausalLM


@dataclass(frozen=True)
class HeadDeviation:
    """Mean JSD (nats) between consecutive layers' head-averaged attention rows."""

    per_layer_pair: tuple[float, ...]  # entry l: layers l and l+1
    mean: float  # over the layer pairs
    positions: int  # query positions averaged over


@contextmanager
def capture_attention(model: SCRForCausalLM) -> Iterator[list[list[Tensor]]]:
    """While open, every forward appends each layer's float32 attention probabilities
    [B,H,T,P+T] (the very softmax the attention multiplies V by) to that layer's list."""
    layers = [block.self_attn for block in model.model.layers]
    captured: list[list[Tensor]] = [[] for _ in layers]
    for attn, sink in zip(layers, captured):
        attn.capture = sink
    try:
        yield captured
    finally:
        for attn in layers:
            attn.capture = None


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """JSD in nats over the last axis of two distributions; 0 * log 0 counts as 0."""
    m = 0.5 * (p + q)

    def kl_to_m(a: Tensor) -> Tensor:
        ratio = torch.where(a > 0, a / m, 1.0)  # where a > 0, m >= a / 2 > 0
        return torch.xlogy(a, ratio).sum(-1)

    return 0.5 * kl_to_m(p) + 0.5 * kl_to_m(q)


@torch.no_grad()
def head_deviation(model: SCRForCausalLM, ids: Tensor, chunk: int = 256) -> HeadDeviation:
    """ids [B,T] int64 (every token real), positions 0..T-1 -> the head deviation."""
    if model.config.n_layers < 2 or ids.ndim != 2 or ids.shape[1] == 0:
        raise ScredgeError("head deviation needs two layers and a [batch, tokens] input",
                           received=f"{model.config.n_layers} layers, ids {tuple(ids.shape)}",
                           expected=">= 2 layers, ids [B,T] with T >= 1")
    B, T = ids.shape
    totals = torch.zeros(model.config.n_layers - 1, dtype=torch.float64)
    state = ModelState.empty(model.config, B, device=ids.device)
    for start in range(0, T, chunk):
        piece = ids[:, start:start + chunk]
        positions = torch.arange(start, start + piece.shape[1], device=ids.device)
        with capture_attention(model) as captured:
            _, state = model(piece, positions.expand(B, -1), state)
        # one call per chunk: each layer's list holds one [B,H,t,P+t]; average the heads
        rows = [calls[0].double().mean(dim=1) for calls in captured]  # [B,t,P+t] each
        for pair in range(len(rows) - 1):
            totals[pair] += js_divergence(rows[pair], rows[pair + 1]).sum()
    per_pair = tuple(float(v) / (B * T) for v in totals)
    return HeadDeviation(per_pair, math.fsum(per_pair) / len(per_pair), B * T)
