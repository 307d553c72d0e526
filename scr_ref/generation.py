"""The plain reference generation loop: prefill, decode_step, sample, generate.

Sampling is the shared NumPy `Sampler`, so the same seed gives the same tokens
here and in the torch-free runtime whenever the logits agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from scredge.ref.model import ModelState, SCRForCausalLM
from scredge.sampling import GREEDY, RowSampler, Sampler, SamplingParams, mark_seen, row_seeds


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
    seed=0,
    stop_ids: Sequence[int] = (),
) -> list[list[int]]:
    """Prompts (any lengths) -> the new ids of each row (a row stops at a stop id).

    Each row samples from its own stream seeded by its seed (`seed` for every row, or one
    per row), so a row's ids equal its prompt's alone. Prompts of unequal length are
    prefilled one by one and joined (SCR_SPEC section 3: `ModelState.join`)."""
    rows = [list(prompt)] if prompt and isinstance(prompt[0], int) else [list(p) for p in prompt]
    sampler = RowSampler(params, row_seeds(seed, len(rows)))
    seen = None
    if params.repetition_penalty != 1.0:
        seen = np.zeros((len(rows), model.config.vocab_size), dtype=bool)
        for b, r in enumerate(rows):
            seen[b, r] = True
    if len({len(r) for r in rows}) == 1:
        logits, state = prefill(model, torch.tensor(rows, dtype=torch.int64))
    else:
        alone = [prefill(model, torch.tensor([r], dtype=torch.int64)) for r in rows]
        logits = torch.cat([lg for lg, _ in alone])
        state = ModelState.join([st for _, st in alone])
    out: list[list[int]] = [[] for _ in rows]
    done = np.zeros(len(rows), dtype=bool)
    position = torch.tensor([len(r) for r in rows], dtype=torch.int64)  # [B], each row's own
    for step in range(max_new_tokens):
        token = sample(logits, sampler, seen)  # [B]
        for b, t in enumerate(token.tolist()):
            if not done[b]:
                out[b].append(t)
                done[b] = t in stop_ids
        if done.all() or step == max_new_tokens - 1:
            break
        mark_seen(seen, token.numpy())
        with torch.no_grad():
            step_logits, state = model(token.view(-1, 1), position.view(-1, 1), state)
        logits = step_logits[:, -1]
        position = position + 1
    return out
