"""The float32 reference's one pass in an export (issue 27): the golden reference of SCR_SPEC
section 5 (teacher-forced calls with the hidden state after every layer, the final state,
the `Realign` cases, 256 free-running greedy tokens), which the verification then replays
instead of running the reference a second time.

The greedy tokens are the reference's, found with prompt lookup: the tokens that followed the
latest earlier occurrence of the last n-gram (runtime/speculative.py's `NgramProposer`),
repeated with their period when fewer than asked (`periodic`), are fed after the pending
token in one call and kept while each equals the reference's argmax there, plus the argmax
after the last one kept. The tokens are those of one call per token (up to float32 rounding
between a call of T tokens and T calls of one, i.e. at exact near-ties), in a few calls
where greedy text repeats itself, as free-running greedy output soon does. A call whose
proposal was cut short is run again from the state before it with only the tokens kept, so
the KV cache and the SCR carries are exactly those of the tokens taken.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from scredge.contract import GOLDEN_FILE, WEIGHTS_FILE
from scredge.deps import require

GREEDY_TOKENS = 256  # SCR_SPEC section 5, free-running greedy
LOOKUP_K = 16  # most tokens proposed per call


def lookup_greedy(model, prompt: list[int], n: int, k: int = LOOKUP_K,
                  stats: dict | None = None) -> list[int]:
    """The reference `model`'s first `n` greedy tokens after `prompt` (batch 1); `stats`
    receives the number of calls and of proposed / accepted tokens. Up to `k` tokens are
    proposed a call: twice as many after a proposal taken whole, one after a rejection
    (text that does not repeat costs about one call a token)."""
    torch = require("torch")
    from scredge.runtime.speculative import NgramProposer

    def call(tokens: list[int], start: int, state):
        pos = torch.arange(start, start + len(tokens), dtype=torch.int64)[None]
        return model(torch.tensor([tokens], dtype=torch.int64), pos, state)

    c = model.config
    cut = not c.scr_layers and c.window is None  # else a rejection reruns the tokens kept
    counts = {"calls": 1, "proposed": 0, "accepted": 0}
    size = min(4, k)
    with torch.no_grad():
        logits, state = call(list(prompt), 0, None)
        out = [int(logits[0, -1].argmax())]
        lookup = NgramProposer(list(prompt) + out)
        start = len(prompt)  # the position of the pending token out[-1]
        while len(out) < n:
            drafts = periodic(lookup.propose(size)[0], min(size, n - len(out) - 1))
            fed = [out[-1], *drafts]
            logits, after = call(fed, start, state)
            best = logits[0].argmax(-1).tolist()
            j = 0
            while j < len(drafts) and drafts[j] == best[j]:
                j += 1
            if j < len(drafts):  # the state of the tokens kept only
                after = (_cut(after, start + j + 1) if cut else
                         call(fed[:j + 1], start, state)[1])
                counts["calls"] += 0 if cut else 1
            size = min(k, 2 * size) if drafts and j == len(drafts) else 1 if drafts else size
            counts["calls"] += 1
            counts["proposed"] += len(drafts)
            counts["accepted"] += j
            state, start = after, start + j + 1
            out += [*drafts[:j], best[j]]
            lookup.push(out[-j - 1:])
    if stats is not None:
        stats.update(counts)
    return out[:n]


def _cut(state, length: int):
    """A state without SCR carries or window trimming, cut back to its first `length`
    tokens (the KV cache holds one slot per token, in order)."""
    import dataclasses

    return dataclasses.replace(
        state, keys=[t[:, :, :length] for t in state.keys],
        values=[t[:, :, :length] for t in state.values],
        mask=None if state.mask is None else state.mask[:, :length])


def periodic(drafts: list[int], k: int) -> list[int]:
    """A lookup's proposal cut short by the end of the history (the n-gram's latest earlier
    occurrence lies less than k tokens back: the text repeats with that period) continued
    with the same period, to k tokens: a run of one token proposes k of it, not one."""
    return [drafts[i % len(drafts)] for i in range(k)] if drafts else []


def record_reference(model, greedy_tokens: int, log: Callable[[str], None]):
    """The golden reference (`scredge.ref.golden.Golden`, weights named later by the
    caller) from one pass of `model` on one torch thread (a few small calls: worker
    threads would mostly wait, or spin against a busy machine); the model's mapped pages
    are handed back afterwards."""
    torch = require("torch")
    from scredge.ref.golden import golden_from_model
    from scredge.ref.mapped import release_all

    stats: dict = {}

    def greedy(m, prompt, count):
        return lookup_greedy(m, prompt, count, stats=stats)

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        golden = golden_from_model(model, "", greedy_tokens=greedy_tokens, greedy=greedy)
    finally:
        torch.set_num_threads(threads)
    release_all(model)
    if greedy_tokens:
        log(f"  reference pass in {time.perf_counter() - t0:.1f} s ({greedy_tokens} greedy "
            f"tokens in {stats['calls']} calls, {stats['accepted']}/{stats['proposed']} "
            "looked-up tokens kept)")
    else:
        log(f"  reference pass in {time.perf_counter() - t0:.1f} s")
    return golden


def finish_reference(tmp: Path, golden, sha256: str, keep: bool, quantized: bool,
                     log: Callable[[str], None]) -> None:
    """A slim folder (`keep` False, SCR_SPEC section 4, v3) drops the reference weights; a
    float one keeps the golden reference its reference pass recorded
    (export/reference_pass.py), so `scredge parity` runs on it without them (a quantized
    one has its held-out reference)."""
    if keep:
        return
    if not quantized:
        (tmp / GOLDEN_FILE).parent.mkdir(exist_ok=True)
        golden.weights_sha256 = sha256
        golden.save(tmp / GOLDEN_FILE)
        log(f"  golden reference kept ({GOLDEN_FILE}, {len(golden.greedy_ids)} greedy tokens)")
    (tmp / WEIGHTS_FILE).unlink(missing_ok=True)
    log(f"  reference weights not kept (slim folder; --keep-reference keeps {WEIGHTS_FILE})")


def replayed_reference(golden):
    """A teacher-forced stepper that replays the golden's calls, checking each is fed the
    ids it was recorded with (the same seed, prompt and greedy choices)."""
    import numpy as np

    calls = iter(zip(golden.steps_ids, golden.steps_logits))

    def step(ids, pos):
        want, logits = next(calls)
        if not np.array_equal(ids, want):
            raise RuntimeError("the verification's teacher-forced ids differ from the "
                               "reference pass's")  # an internal inconsistency, not input
        return logits

    return step
