"""`attention_mask` and the join of SCR_SPEC section 3 (v2) in the reference model. Oracle:
each prompt run alone; a row of a joined, left-padded batch must give exactly its alone
logits (1e-5) at every later call, however far past the window it runs."""

from __future__ import annotations

import pytest
import torch

from scredge.ref import ModelState, build_model

TOL = {"rtol": 1e-5, "atol": 1e-5}
LENGTHS = (3, 7, 5)


def _alone(model, prompt, steps):
    """Prefill `prompt` [T] alone, then decode `steps` [N] tokens -> [N+1 logits [V]], state."""
    T = len(prompt)
    logits, state = model(prompt[None], torch.arange(T)[None])
    out = [logits[0, -1]]
    for k, tok in enumerate(steps):
        logits, state = model(tok.view(1, 1), torch.tensor([[T + k]]), state)
        out.append(logits[0, -1])
    return out, state


@pytest.mark.parametrize("window", [None, 4, 8])
def test_joined_rows_equal_each_prompt_alone(micro, window):
    """Three prompts of 3, 7, 5 tokens prefilled alone, joined (left-padded caches, mask 0
    in the pads), then 10 decode steps with each row's own positions."""
    model = build_model(micro.with_(window=window), seed=3, gamma=0.5, std=0.08)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 256, (n,), generator=gen) for n in LENGTHS]
    steps = torch.randint(0, 256, (len(LENGTHS), 10), generator=gen)
    with torch.no_grad():
        alone = [_alone(model, p, s)[0] for p, s in zip(prompts, steps)]
        states, first = [], []
        for p in prompts:
            logits, st = model(p[None], torch.arange(len(p))[None])
            states.append(st)
            first.append(logits[0, -1])
        state = ModelState.join(states)
        P = max(LENGTHS) if window is None else min(max(LENGTHS), window - 1)
        assert state.mask.shape == (3, P) and state.mask.dtype == torch.int64
        assert state.mask[0, : P - min(LENGTHS[0], P)].sum() == 0  # the pads of row 0
        pos = torch.tensor(LENGTHS)
        for k in range(steps.shape[1]):
            logits, state = model(steps[:, k:k + 1], (pos + k)[:, None], state)
            for b in range(3):
                torch.testing.assert_close(logits[b, -1], alone[b][k + 1], **TOL)
            assert state.mask.shape[1] == state.past_len  # trimmed with the cache
    for b in range(3):
        torch.testing.assert_close(first[b], alone[b][0], **TOL)


def test_masked_slots_are_invisible_whatever_they_hold(micro):
    """Oracle: the row alone. Its joined cache's pad slots are filled with large random
    keys and values: with mask 0 there they change nothing (1e-5)."""
    model = build_model(micro.with_(window=None), seed=4, gamma=0.5, std=0.08)
    gen = torch.Generator().manual_seed(1)
    short, long = torch.randint(0, 256, (2,), generator=gen), torch.randint(0, 256, (6,),
                                                                             generator=gen)
    with torch.no_grad():
        (_, tail), _ = _alone(model, short, torch.tensor([7]))
        _, s1 = model(short[None], torch.arange(2)[None])
        _, s2 = model(long[None], torch.arange(6)[None])
        state = ModelState.join([s1, s2])
        for t in state.keys + state.values:
            t[0, :, :4] = torch.randn(t[0, :, :4].shape, generator=gen) * 100
        full_mask = torch.cat((state.mask, torch.ones(2, 1, dtype=torch.int64)), dim=1)
        logits, _ = model(torch.tensor([[7], [9]]), torch.tensor([[2], [6]]), state,
                          attention_mask=full_mask)
    torch.testing.assert_close(logits[0, -1], tail, **TOL)


def test_all_ones_mask_equals_no_mask(micro):
    """Oracle: the v1 call without a mask; an explicit all-ones mask is the same call."""
    model = build_model(micro, seed=5, gamma=0.5, std=0.08)
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(2))
    pos = torch.arange(9).expand(2, 9)
    with torch.no_grad():
        plain, _ = model(ids, pos)
        masked, state = model(ids, pos, attention_mask=torch.ones(2, 9, dtype=torch.int64))
    torch.testing.assert_close(masked, plain, rtol=0, atol=0)
    assert state.mask.shape == (2, micro.present_len(0, 9))
