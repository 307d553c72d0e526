"""The memory check of `scredge train`: an upper-bound estimate of one training step's bytes,
refused before anything is allocated when it exceeds what is available."""

from __future__ import annotations

import math

import torch

from scredge.config import SCRConfig
from scredge.memory import available_cpu_memory, refuse_over_memory
from scredge.ref.train_config import TrainConfig

# ---- memory -----------------------------------------------------------------------------
# float32 values kept for the backward pass, fitted to the peak RSS of two CPU training
# steps with torch 2.13 (measured -> estimated MB, RSS varies ~10% run to run: tiny 16x256
# 600-665 -> 758, tiny 8x1024 1712 -> 2014, tiny 32x128 516-627 -> 694, small 4x512
# 1971-2155 -> 2570, small 16x256 3849-3927 -> 3954): an upper bound with some slack.
_ACT_PER_D = 28  # [B,T,D] tensors per layer: norms, q/k/v/o, residuals, SCR realign
_ACT_PER_F = 5  # [B,T,d_ff] tensors per layer: gate, up, silu, product
_ACT_PER_SCORE = 2  # [B,H,T,T] tensors per layer: scores and probabilities
_ACT_PER_V = 4  # [B,T,V] tensors: logits, log-softmax, gradients
_FIXED = 256 << 20  # allocator caches, thread arenas, small buffers


def estimate_memory(config: SCRConfig, cfg: TrainConfig,
                    trainable: str = "all") -> dict[str, int]:
    """Bytes needed by one training step: weights + grads + AdamW states of the trained
    parameters (`--trainable`), activations (backpropagated through every layer either way)."""
    from scredge.ref.train_init import trainable_count

    n = sum(math.prod(s) for s in config.parameter_shapes().values())
    n_trained = trainable_count(config, trainable)
    b, t = cfg.batch_size, cfg.seq_len
    per_layer = (b * t * (_ACT_PER_D * config.d_model + _ACT_PER_F * config.d_ff)
                 + _ACT_PER_SCORE * b * config.n_heads * t * t)
    parts = {
        "parameters": n,
        "trained_parameters": n_trained,
        # float32 weights; grads, exp_avg, exp_avg_sq of the trained ones only
        "weights_grads_adam": 4 * n + 12 * n_trained,
        "activations": 4 * config.n_layers * per_layer,
        "logits": 4 * _ACT_PER_V * b * t * config.vocab_size,
    }
    parts["total"] = parts["weights_grads_adam"] + parts["activations"] + parts["logits"] + _FIXED
    return parts


def available_memory(device: str = "cpu") -> int | None:
    """Free memory in bytes: the CPU's MemAvailable or the CUDA device's; None when it
    cannot be read (then nothing is checked)."""
    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    return available_cpu_memory()


def check_memory(config: SCRConfig, cfg: TrainConfig, available: int | None,
                 trainable: str = "all") -> dict[str, int]:
    """Refuse a run whose estimate exceeds `available` bytes before allocating anything."""
    est = estimate_memory(config, cfg, trainable)
    parts = {f"weights+grads+AdamW ({est['parameters']:,} parameters, "
             f"{est['trained_parameters']:,} trained)": est["weights_grads_adam"],
             f"activations at batch {cfg.batch_size} x seq_len {cfg.seq_len}":
                 est["activations"],
             "logits": est["logits"], "allocator caches and buffers": _FIXED}
    refuse_over_memory("training", parts, available, "available now",
                       fix="lower --batch-size or --seq-len (activations grow with "
                           "batch*seq_len and attention with seq_len^2)")
    return est
