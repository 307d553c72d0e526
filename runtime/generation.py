"""Generation over any runner: `prefill`, `decode_step`, `sample`, and the stateful
`Generator` that callers drive themselves (`append`, `next_token`, `is_done`).

Memory stays constant however long generation runs: the decoder's KV cache holds at most
W-1 positions, the SCR carry is O(layers x width), and the repetition-penalty history is a
[B, V] mask, not a growing list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scredge.errors import ScredgeError
from scredge.runtime.runners.base import Decoder, Runner
from scredge.sampling import GREEDY, Sampler, SamplingParams, mark_seen

MAX_NEW_TOKENS = 100_000_000  # beyond this a request is a mistake, not a plan
PREFILL_CHUNK = 512  # long prompts go in chunks: bounded attention memory per call


def check_ids(rows: np.ndarray, vocab_size: int, what: str = "prompt") -> np.ndarray:
    """[B,T] int64 ids, each in [0, V), T >= 1."""
    if rows.ndim != 2 or rows.shape[1] == 0 or rows.shape[0] == 0:
        raise ScredgeError(f"empty {what}", received=f"shape {list(rows.shape)}",
                           expected="at least one token per row",
                           fix="pass a non-empty prompt")
    if not np.issubdtype(rows.dtype, np.integer):
        raise ScredgeError(f"{what} ids must be integers", received=str(rows.dtype))
    bad = (rows < 0) | (rows >= vocab_size)
    if bad.any():
        b, t = map(int, np.argwhere(bad)[0])
        raise ScredgeError(f"{what} token id outside the vocabulary",
                           received=f"id {int(rows[b, t])} at row {b}, position {t}",
                           expected=f"ids in 0..{vocab_size - 1}")
    return rows.astype(np.int64, copy=False)


def check_max_new_tokens(n: object) -> int:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 0 <= n <= MAX_NEW_TOKENS:
        raise ScredgeError("invalid max_new_tokens", received=repr(n),
                           expected=f"an integer in 0..{MAX_NEW_TOKENS:,}")
    return int(n)


def positions(start: int, batch: int, length: int) -> np.ndarray:
    """[B,T] absolute positions start..start+T-1 (consecutive, shared by every row)."""
    if length == 1:  # the per-token path: the cheapest array NumPy can make
        return np.full((batch, 1), start, dtype=np.int64)
    return np.tile(np.arange(start, start + length, dtype=np.int64), (batch, 1))


def prefill(decoder: Decoder, ids: np.ndarray, start: int = 0,
            chunk: int = PREFILL_CHUNK) -> np.ndarray:
    """ids [B,T] at positions start.. -> logits of the last position [B,V]."""
    B, T = ids.shape
    for s in range(0, T, chunk):
        part = ids[:, s:s + chunk]
        logits = decoder.step(part, positions(start + s, B, part.shape[1]))
    return logits[:, -1]


def decode_step(decoder: Decoder, tokens: np.ndarray, position: int) -> np.ndarray:
    """tokens [B] at absolute `position` -> logits [B,V]."""
    return decoder.step(tokens.reshape(-1, 1), positions(position, len(tokens), 1))[:, -1]


def sample(sampler: Sampler, logits: np.ndarray, seen: np.ndarray | None) -> np.ndarray:
    """logits [B,V] -> ids [B]; marks them in `seen` [B,V] (None: the sampler keeps none)."""
    ids = sampler(logits, seen)
    mark_seen(seen, ids)
    return ids


class Generator:
    """Token-by-token generation that the caller drives.

        gen = Generator(runner, params, seed=0, max_new_tokens=64, stop_ids={10})
        gen.append(prompt_ids)            # [T] or [B,T]
        while not gen.is_done():
            token = gen.next_token()      # [B]

    A sampled token is fed to the model lazily, by the next `next_token` or `append`, so no
    model call is spent on a token nobody asks to continue from.
    """

    def __init__(self, runner: Runner, params: SamplingParams = GREEDY, seed: int | None = 0,
                 max_new_tokens: int = MAX_NEW_TOKENS, stop_ids: Sequence[int] = ()) -> None:
        self.runner = runner
        self.vocab_size = runner.config.vocab_size
        self.sampler = Sampler(params, seed)
        self.max_new_tokens = check_max_new_tokens(max_new_tokens)
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                   for i in stop_ids):
            raise ScredgeError("stop_ids must be token ids", received=repr(stop_ids)[:80],
                               expected="integers")
        # ids outside the vocabulary can never be sampled, so they are left out (and an id
        # beyond int64 cannot overflow the array)
        self.stop_ids = np.array(sorted({int(i) for i in stop_ids
                                         if 0 <= i < self.vocab_size}), dtype=np.int64)
        # [V] lookup: one gather per token instead of np.isin
        self._is_stop = np.zeros(self.vocab_size, dtype=bool)
        self._is_stop[self.stop_ids] = True
        self.batch: int | None = None  # set by the first append
        self.decoder: Decoder | None = None
        self.position = 0  # absolute position of the next token fed
        self.generated = 0
        self.done: np.ndarray | None = None  # [B] bool
        self._logits: np.ndarray | None = None  # [B,V], of the last fed position
        self._unfed: np.ndarray | None = None  # [B], sampled but not yet fed
        self._seen: np.ndarray | None = None
        self._closed = False

    def append(self, ids) -> None:
        """Feed more tokens (a prompt, or a later turn) to every row."""
        rows = np.asarray(ids)
        rows = check_ids(rows[None] if rows.ndim == 1 else rows, self.vocab_size)
        if self._closed:
            raise ScredgeError("append() on a closed generator",
                               received="a generator after close()",
                               expected="an open generator", fix="start a new one")
        if self.decoder is None:
            self.batch = rows.shape[0]
            self.decoder = self.runner.decoder(self.batch)
            self.done = np.zeros(self.batch, dtype=bool)
        elif rows.shape[0] != self.batch:
            raise ScredgeError("appended ids have another batch size",
                               received=rows.shape[0], expected=self.batch)
        if self._unfed is not None:
            rows = np.concatenate([self._unfed[:, None], rows], axis=1)
            self._unfed = None
        if self._seen is None:
            self._seen = self.sampler.history(rows, self.vocab_size)
        else:
            mark_seen(self._seen, rows)
        self._logits = prefill(self.decoder, rows, self.position)
        self.position += rows.shape[1]

    def next_token(self) -> np.ndarray:
        """Sample the next token of every row ([B] int64). Rows already done keep going
        (batched rows share every call) but their tokens are theirs to ignore."""
        if self._closed:
            raise ScredgeError("next_token() on a closed generator",
                               received="a generator after close()",
                               expected="an open generator", fix="start a new one")
        if self.decoder is None:
            raise ScredgeError("next_token() before any input",
                               fix="call append(prompt_ids) first")
        if self.is_done():
            raise ScredgeError("generation is done", received=f"{self.generated} new tokens",
                               fix="check is_done() before next_token(), or append() more")
        if self._unfed is not None:
            self._logits = decode_step(self.decoder, self._unfed, self.position)
            self.position += 1
        token = sample(self.sampler, self._logits, self._seen)
        self._unfed = token
        self.generated += 1
        if self.stop_ids.size:
            self.done |= self._is_stop[token]
        return token

    def close(self, reuse: bool = True) -> None:
        """End this generation. reuse: hand the decoder back to the runner (the TensorRT
        runner reuses its context and device buffers for the next generation); False,
        after a failure, frees it instead, so no later generation inherits its state."""
        self._closed = True
        if self.decoder is not None:
            decoder, self.decoder = self.decoder, None
            self.done[:] = True
            if reuse:
                decoder.release()
            else:
                decoder.close()

    def is_done(self) -> bool:
        return self.done is not None and (bool(self.done.all())
                                          or self.generated >= self.max_new_tokens)
