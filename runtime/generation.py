"""Generation over any runner: `prefill`, `decode_step`, `sample` (defined in
runtime/decoding.py), and the stateful `Generator` that callers drive themselves
(`append`, `next_token`, `is_done`), a thin layer over the batching core's `Batch`.

Memory stays constant however long generation runs: the decoder's KV cache holds at most
W-1 positions, the SCR carry is O(layers x width), the repetition-penalty history is a
[1, V] mask per row, and the Generator's rows keep no output (the caller takes each token).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scredge.errors import ScredgeError
from scredge.runtime.batch import Batch, Request
from scredge.runtime.decoding import (  # noqa: F401 - re-exported: callers import them here
    MAX_NEW_TOKENS,
    PREFILL_CHUNK,
    check_ids,
    check_max_new_tokens,
    check_stop_ids,
    decode_step,
    positions,
    prefill,
    prefill_rows,
    sample,
)
from scredge.runtime.runners.base import Decoder, Runner
from scredge.sampling import GREEDY, SamplingParams, row_seeds


class Generator:
    """Token-by-token generation that the caller drives.

        gen = Generator(runner, params, seed=0, max_new_tokens=64, stop_ids={10})
        gen.append(prompt_ids)            # [T], [B,T], or (first input) rows of any lengths
        while not gen.is_done():
            token = gen.next_token()      # [B]

    Each row samples from its own random stream seeded by its seed (`seed` for every row,
    or one per row), so a row's tokens equal what its prompt gives alone with that seed.
    A row is done at a stop id (the core's stop mechanism: the id is returned, and the row
    takes no more) or after max_new_tokens. `leave(rows)` drops rows (never computed
    again) and `join(other)` adds another generator's rows, whatever their sampling
    parameters, to this batch at the next step, as a server adds a request.

    A sampled token is fed to the model lazily, by the next `next_token` or `append`, so no
    model call is spent on a token nobody asks to continue from.
    """

    def __init__(self, runner: Runner, params: SamplingParams = GREEDY, seed=0,
                 max_new_tokens: int = MAX_NEW_TOKENS, stop_ids: Sequence[int] = ()) -> None:
        self.runner = runner
        self.vocab_size = runner.config.vocab_size
        self.params = params
        self.seed = seed
        self.max_new_tokens = check_max_new_tokens(max_new_tokens)
        self.stop_ids = check_stop_ids(stop_ids, self.vocab_size)
        self.core = Batch(runner, keep=False)  # the rows; their tokens are the caller's
        self.generated = 0  # next_token calls
        self._started = False
        self._closed = False

    # ---- the state, as the core holds it ------------------------------------------------
    @property
    def batch(self) -> int | None:
        return len(self.core.rows) if self._started else None

    @property
    def decoder(self) -> Decoder | None:
        return self.core.decoder

    @property
    def done(self) -> np.ndarray | None:
        """[B] bool: each row stopped or ran out of budget."""
        return np.array([r.finished for r in self.core.rows], dtype=bool) \
            if self._started else None

    @property
    def row_generated(self) -> np.ndarray | None:
        """[B] tokens each row took."""
        return np.array([r.generated for r in self.core.rows], dtype=np.int64) \
            if self._started else None

    @property
    def logits(self) -> np.ndarray | None:
        """[B,V] of the last fed position, after an append and before next_token."""
        return self.core.logits

    def append(self, ids) -> None:
        """Feed more tokens (a prompt, or a later turn) to every row. The first input may be
        rows of different lengths (a list of id lists): each length is prefilled apart and
        the rows are joined into one batch."""
        self._check_open("append")
        if not self._started:
            if _is_ragged(ids):
                rows = [np.asarray(r) for r in ids]
            else:
                rows = np.asarray(ids)
                rows = list(rows[None] if rows.ndim == 1 else rows)
            seeds = row_seeds(self.seed, len(rows))  # refused before any model call
            self.core.admit([Request(r, self.params, s, self.max_new_tokens, self.stop_ids)
                             for r, s in zip(rows, seeds)], choose=False)
            self._started = True
            return
        if _is_ragged(ids):
            raise ScredgeError("a later turn must give every row the same number of tokens",
                               received=sorted({len(r) for r in ids}),
                               expected="one length (rows of any length only as the first "
                                        "input)", fix="append the rows' turns one length at a time")
        rows = np.asarray(ids)
        rows = check_ids(rows[None] if rows.ndim == 1 else rows, self.vocab_size)
        if rows.shape[0] != self.batch:
            raise ScredgeError("appended ids have another batch size",
                               received=rows.shape[0], expected=self.batch)
        self.core.extend(rows)

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ScredgeError(f"{what}() on a closed generator",
                               received="a generator after close()",
                               expected="an open generator", fix="start a new one")

    def next_token(self) -> np.ndarray:
        """Sample the next token of every row ([B] int64). Rows already done keep going
        until they `leave` (batched rows share every call), their tokens theirs to ignore."""
        self._check_open("next_token")
        if not self._started:
            raise ScredgeError("next_token() before any input",
                               fix="call append(prompt_ids) first")
        if self.is_done():
            raise ScredgeError("generation is done", received=f"{self.generated} new tokens",
                               fix="check is_done() before next_token(), or append() more")
        self.core.step()
        self.generated += 1
        return self.core.tokens

    # ---- the batch's membership -----------------------------------------------------
    def leave(self, rows) -> None:
        """Drop rows (indices into this batch): they are never decoded again, and the rows
        after them move up. Dropping every row ends the generation."""
        self._check_open("leave")
        gone = {int(r) for r in rows}
        if any(not 0 <= r < (self.batch or 0) for r in gone):
            raise ScredgeError("leave() got rows outside the batch", received=sorted(gone),
                               expected=f"indices in 0..{(self.batch or 0) - 1}")
        self.core.retire([self.core.rows[r] for r in gone])
        if not self.core.rows:
            self.close()

    def join(self, other: Generator) -> None:
        """Add `other`'s rows (a started generator on the same runner, any sampling
        parameters, seeds and budget) after this batch's rows, from the next step on;
        `other` is consumed. Each row continues exactly as it would alone."""
        self._check_open("join")
        other._check_open("join")
        if not (self._started and other._started) or other.runner is not self.runner:
            raise ScredgeError("join() needs two started generators on the same runner",
                               fix="append a prompt to each first")
        self.core.join(other.core)
        other._closed = True

    def close(self, reuse: bool = True) -> None:
        """End this generation. reuse: hand the decoder back to the runner (the TensorRT
        runner reuses its context and device buffers for the next generation); False,
        after a failure, frees it instead, so no later generation inherits its state."""
        self._closed = True
        self.core.close(reuse)

    def is_done(self) -> bool:
        if self._closed:
            return True
        return self._started and all(r.finished for r in self.core.rows)


def _is_ragged(ids) -> bool:
    """A list of id rows whose lengths differ."""
    if isinstance(ids, np.ndarray) or not isinstance(ids, (list, tuple)) or not ids:
        return False
    if not all(isinstance(r, (list, tuple, np.ndarray)) for r in ids):
        return False
    return len({len(r) for r in ids}) > 1
