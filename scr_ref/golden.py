"""The golden reference of SCR_SPEC section 5, computed from a float32 reference model
(needs torch): what `scredge parity --record` stores from a folder's kept weights, and what
`scredge export` records itself into a folder that does not keep them.

What is recorded (every tier):
- op: random `Realign` inputs, long T included, and the reference outputs;
- a prefill of fixed prompts and N teacher-forced decode steps: logits, the hidden state
  after every layer, and the final KV/SCR state;
- free-running greedy: the reference's first 256 greedy tokens after prompt row 0.
"""

from __future__ import annotations

import numpy as np

from scredge.contract import present_carry, present_kv
from scredge.deps import require
from scredge.golden_file import Golden

OP_CASES = ((2, 7), (1, 1), (1, 4096))  # (B, T): a chunk, a decode step, a long call


def _hidden_hooks(model, store: list):
    """Capture x after every layer: the SCR output where the layer has one, else h."""
    handles = []
    for i, block in enumerate(model.model.layers):
        target = block.scr if i in model.config.scr_layers else block

        def hook(_module, _inputs, output, i=i):
            store.append((i, output[0].detach().float().numpy().copy()))

        handles.append(target.register_forward_hook(hook))
    return handles


def golden_from_model(model, weights_sha256: str, *, batch: int = 2, prompt_len: int = 24,
                      decode_steps: int = 16, greedy_tokens: int = 256,
                      seed: int = 0, greedy=None) -> Golden:
    """Run the float32 reference `model` and return the golden data, naming the weights by
    `weights_sha256` (the sha256 of their model.safetensors). `greedy(model, prompt,
    n)` -> the n greedy ids (default: `generation.generate`, one token a call); with
    `greedy_tokens` 0 none are recorded. The teacher-forced calls are those of
    `scredge.teacher_forced` with the same batch, prompt length, steps and seed (the export
    verification replays them)."""
    torch = require("torch")
    from scredge.ref.generation import generate
    from scredge.ref.realign_op import realign

    c = model.config
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, c.vocab_size, size=(batch, prompt_len), dtype=np.int64)

    hidden: list = []
    handles = _hidden_hooks(model, hidden)
    steps_ids, steps_logits, steps_hidden = [], [], []
    state, ids, start = None, prompt, 0
    try:
        with torch.no_grad():
            for _ in range(decode_steps + 1):
                T = ids.shape[1]
                pos = np.tile(np.arange(start, start + T, dtype=np.int64), (batch, 1))
                hidden.clear()
                logits, state = model(torch.from_numpy(ids), torch.from_numpy(pos), state)
                steps_ids.append(ids)
                steps_logits.append(logits.numpy())
                steps_hidden.append(np.stack([h for _, h in sorted(hidden)]))  # [L,B,T,D]
                start += T
                ids = logits[:, -1].argmax(-1).numpy().astype(np.int64)[:, None]
    finally:
        for h in handles:
            h.remove()

    final = {}
    for i in range(c.n_layers):
        final[present_kv(i, "key")] = state.keys[i].numpy()
        final[present_kv(i, "value")] = state.values[i].numpy()
    for i in c.scr_layers:
        final[present_carry(i, "num")] = state.scr_num[i].numpy()
        final[present_carry(i, "den")] = state.scr_den[i].numpy()

    op_inputs, op_outputs = [], []
    g = torch.Generator().manual_seed(seed)
    for B, T in OP_CASES:
        D = c.d_model
        args = [torch.randn(B, T, D, generator=g) * 3, torch.randn(B, T, D, generator=g),
                torch.randn(B, D, generator=g), torch.rand(B, 1, generator=g) + 0.5,
                torch.randn(D, generator=g) * 0.3, torch.randn(1, generator=g),
                torch.randn(D, generator=g) * 0.3, torch.randn(1, generator=g)]
        out = realign(*args, c.kappa)
        op_inputs.append([a.numpy() for a in args])
        op_outputs.append([o.numpy() for o in out])

    if greedy is None:
        def greedy(m, p, n):
            return generate(m, p, n)[0]

    ids_greedy = greedy(model, prompt[0].tolist(), greedy_tokens) if greedy_tokens else []
    return Golden(
        weights_sha256=weights_sha256,
        config=c.to_dict(), steps_ids=steps_ids, steps_logits=steps_logits,
        steps_hidden=steps_hidden, final_state=final, op_inputs=op_inputs,
        op_outputs=op_outputs, kappa=c.kappa, greedy_prompt=prompt[0],
        greedy_ids=np.asarray(ids_greedy, dtype=np.int64))


