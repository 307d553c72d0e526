"""The plain reference generation loop: prefill, decode_step, sample, generate.

Sampling is the shared NumPy `Sampler`, so the same seed gives the same tokens
here and in the torch-free runtime whenever the logits agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from scredge.ref.model import ModelState, SCRForCausalLM
from scredge.sampling import GREEDY, Sampler, SamplingParams, mark_seen


@torch.no_grad()
def prefill(
    model: SCRForCausalLM, ids: torch.Tensor, state: ModelState | None = None, start: int = 0
) -> tuple[torch.Tensor, ModelState]:
    """ids [B,T] at absolute positions start..start+T-1 -> last logits [B,V], state."""
    B, T = ids.shape
    positions = torch.arange(start, start + T, dtype=torch.int64).expand(B, T)
    logits, state = model(ids, positions, state)
    return logits[:, -1], state


@torch.no_grad()
def decode_step(
    model: SCRForCausalLM, token: torch.Tensor, position: int, state: ModelState
) -> tuple[torch.Tensor, ModelState]:
    """token [B] at absolute `position` -> logits [B,V], state."""
    return prefill(model, token.view(-1, 1), state, start=position)


def sample(logits: torch.Tensor, sampler: Sampler, seen: np.ndarray | None) -> torch.Tensor:
    """logits [B,V] -> ids [B] via the shared NumPy sampler; `seen` [B,V] bool or None."""
    return torch.from_numpy(sampler(logits.numpy(), seen))


def generate(
    model: SCRForCausalLM,
    prompt: Sequence[Sequence[int]] | Sequence[int],
    max_new_tokens: int,
    params: SamplingParams = GREEDY,
    seed: int | None = 0,
    stop_ids: Sequence[int] = (),
) -> list[list[int]]:
    """Prompts of equal length -> the new ids of each row (a row stops at a stop id)."""
    rows = [list(prompt)] if prompt and isinstance(prompt[0], int) else [list(p) for p in prompt]
    ids = torch.tensor(rows, dtype=torch.int64)  # [B,T]
    sampler = Sampler(params, seed)
    seen = sampler.history(ids.numpy(), model.config.vocab_size)
    logits, state = prefill(model, ids)
    out: list[list[int]] = [[] for _ in rows]
    done = np.zeros(len(rows), dtype=bool)
    position = ids.shape[1]
    for step in range(max_new_tokens):
        token = sample(logits, sampler, seen)  # [B]
        for b, t in enumerate(token.tolist()):
            if not done[b]:
                out[b].append(t)
                done[b] = t in stop_ids
        if done.all() or step == max_new_tokens - 1:
            break
        mark_seen(seen, token.numpy())
        logits, state = decode_step(model, token, position, state)
        position += 1
    return out
