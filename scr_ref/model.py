"""The reference SCR language model (SCR_SPEC sections 1 and 3): the ground truth.

One readable file, ordered sublayers -> block -> model. Module and parameter
names follow the Hugging Face Llama layout so `state_dict()` is a valid
scredge checkpoint and plain Llama weights load unchanged.

`forward(ids, positions, state) -> (logits, new_state)` threads the KV cache
(the last W-1 keys after rotary, values as projected) and the SCR carry
(num, den) exactly as the exported graph does, so one prefill, chunked
prefill and token-by-token decode all give the same logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scredge.config import SCRConfig
from scredge.errors import ScredgeError
from scredge.ref.realign_op import realign


# ---- state ------------------------------------------------------------------
@dataclass
class ModelState:
    """What one call hands the next: per layer (key, value), per SCR layer (num, den)."""

    keys: list[Tensor]  # per layer [B,Hk,P,Dh], after rotary
    values: list[Tensor]  # per layer [B,Hk,P,Dh]
    scr_num: dict[int, Tensor]  # per SCR layer [B,D] float32
    scr_den: dict[int, Tensor]  # per SCR layer [B,1] float32
    # [B,P] int64, 1 = real token, 0 = a pad slot left by a join (SCR_SPEC section 3);
    # None = every cached slot is real (a row or batch that was never joined)
    mask: Tensor | None = None

    @classmethod
    def empty(
        cls, config: SCRConfig, batch: int, dtype: torch.dtype = torch.float32, device=None
    ) -> ModelState:
        kv = (batch, config.n_kv_heads, 0, config.head_dim)
        f32 = torch.float32
        return cls(
            keys=[torch.zeros(kv, dtype=dtype, device=device) for _ in range(config.n_layers)],
            values=[torch.zeros(kv, dtype=dtype, device=device) for _ in range(config.n_layers)],
            scr_num={
                i: torch.zeros(batch, config.d_model, dtype=f32, device=device)
                for i in config.scr_layers
            },
            scr_den={i: torch.zeros(batch, 1, dtype=f32, device=device) for i in config.scr_layers},
        )

    @property
    def past_len(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    @classmethod
    def join(cls, states: list[ModelState]) -> ModelState:
        """One batch from several (SCR_SPEC section 3): each cache left-padded with zeros to
        the longest P, mask 0 in those slots; SCR carries stacked as they are."""
        P = max(s.past_len for s in states)

        def pad(t: Tensor) -> Tensor:  # [B,Hk,p,Dh] -> [B,Hk,P,Dh], zeros on the left
            return F.pad(t, (0, 0, P - t.shape[2], 0))

        def mask(s: ModelState) -> Tensor:
            own = s.mask if s.mask is not None else torch.ones(
                s.keys[0].shape[0], s.past_len, dtype=torch.int64, device=s.keys[0].device)
            return F.pad(own, (P - s.past_len, 0))

        layers = range(len(states[0].keys))
        return cls(
            keys=[torch.cat([pad(s.keys[i]) for s in states]) for i in layers],
            values=[torch.cat([pad(s.values[i]) for s in states]) for i in layers],
            scr_num={i: torch.cat([s.scr_num[i] for s in states]) for i in states[0].scr_num},
            scr_den={i: torch.cat([s.scr_den[i] for s in states]) for i in states[0].scr_den},
            mask=torch.cat([mask(s) for s in states]),
        )


# ---- sublayers ----------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # statistics in float32 whatever the activation dtype (as HF Llama)
        xf = x.to(torch.float32)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rotary_inv_freq(c: SCRConfig) -> Tensor:
    """[Dh/2] float32 rotary frequencies, with the config's `rope_scaling` (SCR_SPEC v2).

    The float32 operations are transformers' own, in its order, so the frequencies are
    bit-equal to the ones a transformers model of the same config uses."""
    dim = c.head_dim
    inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    r = c.rope_scaling
    if r is None:
        return inv_freq
    if r.rope_type == "linear":
        return inv_freq / r.factor
    # llama3: long wavelengths are slowed by `factor`, short ones kept, the band between
    # interpolated smoothly
    old_len = r.original_max_position_embeddings
    low_freq_wavelen = old_len / r.low_freq_factor
    high_freq_wavelen = old_len / r.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / r.factor, inv_freq)
    smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor)
    smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def rotary_cos_sin(positions: Tensor, inv_freq: Tensor) -> tuple[Tensor, Tensor]:
    """positions [B,T], inv_freq [Dh/2] -> cos, sin [B,T,Dh] in float32 (HF rotate-half)."""
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq.to(positions.device)
    emb = torch.cat((angles, angles), dim=-1)  # [B,T,Dh]
    return emb.cos(), emb.sin()


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B,heads,T,Dh], cos/sin [B,T,Dh]."""
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    return x * cos + rotate_half(x) * sin


def visible_mask(past: int, new: int, window: int | None, device=None) -> Tensor:
    """[T, P+T] bool: query i (absolute index P+i) sees key j iff P+i-W < j <= P+i."""
    q = torch.arange(new, device=device).unsqueeze(1) + past  # [T,1]
    k = torch.arange(past + new, device=device).unsqueeze(0)  # [1,P+T]
    mask = k <= q
    if window is not None:
        mask = mask & (k > q - window)
    return mask


class Attention(nn.Module):
    def __init__(self, c: SCRConfig) -> None:
        super().__init__()
        self.c = c
        kv = c.n_kv_heads * c.head_dim
        self.q_proj = nn.Linear(c.d_model, c.d_model, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.d_model, kv, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.d_model, kv, bias=c.attention_bias)
        self.o_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        # Opt-in (scredge.ref.attention_stats.capture_attention): a list that receives each
        # call's float32 attention probabilities [B,H,T,P+T]; None = the normal path.
        self.capture: list[Tensor] | None = None

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, past_k: Tensor, past_v: Tensor,
        key_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """key_mask [B,P+T] int64 or None: a key whose mask is 0 is invisible (a pad)."""
        c = self.c
        B, T, _ = x.shape
        P = past_k.shape[2]
        q = self.q_proj(x).view(B, T, c.n_heads, c.head_dim).transpose(1, 2)  # [B,H,T,Dh]
        k = self.k_proj(x).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)  # [B,Hk,T,Dh]
        v = self.v_proj(x).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)  # [B,Hk,T,Dh]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k_all = torch.cat((past_k, k), dim=2)  # [B,Hk,P+T,Dh]
        v_all = torch.cat((past_v, v), dim=2)
        keep = c.present_len(P, T)
        present_k, present_v = k_all[:, :, P + T - keep :], v_all[:, :, P + T - keep :]

        # Each KV head serves kv_groups consecutive query heads: fold a head's group into
        # its rows rather than copying K and V once per query head.
        G = c.kv_groups
        qg = q.reshape(B, c.n_kv_heads, G * T, c.head_dim)  # [B,Hk,G*T,Dh], row g*T + t
        scores = (qg @ k_all.transpose(-1, -2)) * c.head_dim**-0.5  # [B,Hk,G*T,P+T]
        mask = visible_mask(P, T, c.window, device=x.device).repeat(G, 1)  # [G*T,P+T]
        if key_mask is not None:  # pads left by a join: hidden from every query
            mask = mask & (key_mask != 0)[:, None, None, :]  # [B,1,G*T,P+T]
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores.to(torch.float32), dim=-1)  # [B,Hk,G*T,P+T]
        if self.capture is not None:  # row g*T + t of KV head j is query head j*G + g
            self.capture.append(probs.detach().reshape(B, c.n_heads, T, P + T))
        probs = probs.to(q.dtype)
        out = (probs @ v_all).reshape(B, c.n_heads, T, c.head_dim)  # [B,H,T,Dh]
        out = out.transpose(1, 2).reshape(B, T, c.d_model)  # [B,T,D]
        return self.o_proj(out), present_k, present_v


class MLP(nn.Module):
    def __init__(self, c: SCRConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.d_model, c.d_ff, bias=False)
        self.up_proj = nn.Linear(c.d_model, c.d_ff, bias=False)
        self.down_proj = nn.Linear(c.d_ff, c.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ScoreHead(nn.Module):
    """A scalar score per token, `w . h + b` (relevance or gate of SCR_SPEC section 2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))  # [D]
        self.bias = nn.Parameter(torch.zeros(1))  # [1]


class SCR(nn.Module):
    """Realign, then the gated transform: x = h + gamma * (m @ Wp^T + eps)."""

    def __init__(self, c: SCRConfig) -> None:
        super().__init__()
        self.kappa = c.kappa
        self.relevance = ScoreHead(c.d_model)
        self.gate = ScoreHead(c.d_model)
        self.proj = nn.Linear(c.d_model, c.d_model, bias=True)  # Wp [D,D] out x in, eps [D]
        self.scale = nn.Parameter(torch.zeros(c.d_model))  # gamma [D]; 0 = exact identity

    def forward(
        self, h: Tensor, m: Tensor, num: Tensor, den: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r, g = self.relevance, self.gate
        m, num, den = realign(h, m, num, den, r.weight, r.bias, g.weight, g.bias, self.kappa)
        x = h + self.scale * self.proj(m)  # [B,T,D]
        return x, m, num, den


# ---- block ----------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, c: SCRConfig, index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.d_model, c.norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.d_model, c.norm_eps)
        self.mlp = MLP(c)
        if index in c.scr_layers:
            self.scr = SCR(c)

    def forward(self, x, cos, sin, past_k, past_v, key_mask=None):
        attn, present_k, present_v = self.self_attn(
            self.input_layernorm(x), cos, sin, past_k, past_v, key_mask
        )
        a = x + attn  # [B,T,D]
        h = a + self.mlp(self.post_attention_layernorm(a))  # [B,T,D]
        return h, present_k, present_v


# ---- model ----------------------------------------------------------------------
class Decoder(nn.Module):
    """HF's `model.*` part: embeddings, blocks, final norm."""

    def __init__(self, c: SCRConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList(Block(c, i) for i in range(c.n_layers))
        self.norm = RMSNorm(c.d_model, c.norm_eps)


class SCRForCausalLM(nn.Module):
    def __init__(self, config: SCRConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        # A plain attribute, not a buffer: outside the state dict, and float32 even in a
        # model cast to float16 (as the frequencies were when computed in forward).
        self.inv_freq = rotary_inv_freq(config)  # [Dh/2] float32

    @property
    def output_weight(self) -> Tensor:
        return self.model.embed_tokens.weight if self.config.tie_embeddings else self.lm_head.weight

    def forward(
        self, ids: Tensor, positions: Tensor, state: ModelState | None = None,
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, ModelState]:
        """ids, positions [B,T] int64 -> logits [B,T,V] float32, the state for the next call.

        attention_mask [B,P+T] int64 (SCR_SPEC section 3, v2): 0 marks a pad slot of the
        cache, invisible to every query; the last T columns are 1. None: built from the
        state's own mask (all real when it has none). The returned state keeps the mask's
        last P' columns, trimmed with the cache."""
        c = self.config
        B, T = ids.shape
        x = self.model.embed_tokens(ids)  # [B,T,D]
        if state is None:
            state = ModelState.empty(c, B, dtype=x.dtype, device=ids.device)
        self._check_state(state, B)
        if attention_mask is None and state.mask is not None:
            new_cols = torch.ones(B, T, dtype=state.mask.dtype, device=state.mask.device)
            attention_mask = torch.cat((state.mask, new_cols), dim=1)  # [B,P+T]
        cos, sin = rotary_cos_sin(positions, self.inv_freq)  # [B,T,Dh]
        m = torch.zeros_like(x)  # SCR context through depth, [B,T,D]
        new = ModelState([], [], {}, {})
        for i, block in enumerate(self.model.layers):
            h, k, v = block(x, cos, sin, state.keys[i], state.values[i], attention_mask)
            new.keys.append(k)
            new.values.append(v)
            if i in c.scr_layers:
                x, m, new.scr_num[i], new.scr_den[i] = block.scr(
                    h, m, state.scr_num[i], state.scr_den[i]
                )
            else:
                x = h
        logits = (self.model.norm(x) @ self.output_weight.T).to(torch.float32)  # [B,T,V]
        if attention_mask is not None:  # the mask is trimmed with the cache
            new.mask = attention_mask[:, attention_mask.shape[1] - new.keys[0].shape[2]:]
        return logits, new

    def _check_state(self, state: ModelState, batch: int) -> None:
        c = self.config
        if len(state.keys) != c.n_layers or set(state.scr_num) != set(c.scr_layers):
            raise ScredgeError(
                "state does not match the model",
                received=f"{len(state.keys)} KV layers, SCR layers {sorted(state.scr_num)}",
                expected=f"{c.n_layers} KV layers, SCR layers {list(c.scr_layers)}",
                fix="start from ModelState.empty(config, batch) or the state the model returned",
            )
        past = state.past_len
        if c.max_cache is not None and past > c.max_cache:
            raise ScredgeError(
                "past KV cache is longer than the window allows",
                received=f"P = {past}",
                expected=f"P <= window - 1 = {c.max_cache}",
                fix="pass the state returned by the previous call; it keeps the last W-1 keys",
            )
        if state.keys[0].shape[0] != batch:
            raise ScredgeError(
                "state batch size differs from the input batch size",
                received=f"state batch {state.keys[0].shape[0]}, input batch {batch}",
                expected="equal",
            )


# ---- initialisation ---------------------------------------------------------------
def init_weights(
    model: SCRForCausalLM, seed: int = 0, *, std: float = 0.02, gamma: float = 0.1
) -> SCRForCausalLM:
    """Deterministic seeded init: one generator, parameters in state-dict order.

    `gamma` is the initial SCR scale; the presets use a non-zero value so the
    SCR path is exercised. gamma = 0 makes every SCR layer an exact identity.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.fill_(1.0)
            elif name.endswith("scr.scale"):
                p.fill_(gamma)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def build_model(
    config: SCRConfig, seed: int = 0, *, gamma: float = 0.1, std: float = 0.02
) -> SCRForCausalLM:
    """A float32 reference model with deterministic seeded weights, in eval mode."""
    return init_weights(SCRForCausalLM(config), seed, std=std, gamma=gamma).eval()
