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
from scredge.sampling import GREEDY, RowSampler, Sampler, SamplingParams, mark_seen, row_seeds

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


def positions(start, batch: int, length: int) -> np.ndarray:
    """[B,T] absolute positions start..start+T-1, consecutive per row; `start` is one int
    for every row or [B] (rows joined at different lengths have their own positions)."""
    if isinstance(start, np.ndarray):
        return start.astype(np.int64).reshape(batch, 1) + np.arange(length, dtype=np.int64)
    if length == 1:  # the per-token path: the cheapest array NumPy can make
        return np.full((batch, 1), start, dtype=np.int64)
    return np.tile(np.arange(start, start + length, dtype=np.int64), (batch, 1))


def prefill(decoder: Decoder, ids: np.ndarray, start=0,
            chunk: int = PREFILL_CHUNK) -> np.ndarray:
    """ids [B,T] at positions start.. (int, or [B]) -> logits of the last position [B,V]."""
    B, T = ids.shape
    for s in range(0, T, chunk):
        part = ids[:, s:s + chunk]
        logits = decoder.step(part, positions(start + s, B, part.shape[1]))
    return logits[:, -1]


def decode_step(decoder: Decoder, tokens: np.ndarray, position) -> np.ndarray:
    """tokens [B] at absolute `position` (int, or [B]) -> logits [B,V]."""
    return decoder.step(tokens.reshape(-1, 1), positions(position, len(tokens), 1))[:, -1]


def prefill_rows(runner: Runner, rows: Sequence[np.ndarray]) -> tuple[Decoder, np.ndarray]:
    """Prompts of any lengths -> one decoder holding them all, rows in the given order, and
    the logits of each prompt's last position [B,V]. Prompts of equal length are prefilled
    together, each group alone; the groups are then joined (SCR_SPEC section 3: shorter
    caches left-padded, mask 0 there), so every row continues exactly as it would alone."""
    groups: dict[int, list[int]] = {}
    for b, row in enumerate(rows):
        groups.setdefault(len(row), []).append(b)
    decoders, logits, order = [], [], []
    try:
        for members in groups.values():
            dec = runner.decoder(len(members))
            decoders.append(dec)
            logits.append(prefill(dec, np.stack([rows[b] for b in members])))
            order += members
        first = decoders[0]
        if len(decoders) > 1:
            first.join(*decoders[1:])
            first.select(np.argsort(order))  # back to the callers' order
    except BaseException:
        for dec in decoders:
            dec.close()
        raise
    return first, np.concatenate(logits)[np.argsort(order)]


def sample(sampler: Sampler, logits: np.ndarray, seen: np.ndarray | None) -> np.ndarray:
    """logits [B,V] -> ids [B]; marks them in `seen` [B,V] (None: the sampler keeps none)."""
    ids = sampler(logits, seen)
    mark_seen(seen, ids)
    return ids


class Generator:
    """Token-by-token generation that the caller drives.

        gen = Generator(runner, params, seed=0, max_new_tokens=64, stop_ids={10})
        gen.append(prompt_ids)            # [T], [B,T], or (first input) rows of any lengths
        while not gen.is_done():
            token = gen.next_token()      # [B]

    Each row samples from its own random stream seeded by its seed (`seed` for every row,
    or one per row), so a row's tokens equal what its prompt gives alone with that seed.
    `leave(rows)` drops finished rows (never computed again) and `join(other)` adds
    another generator's rows to this batch at the next step, as a server adds a request.

    A sampled token is fed to the model lazily, by the next `next_token` or `append`, so no
    model call is spent on a token nobody asks to continue from.
    """

    def __init__(self, runner: Runner, params: SamplingParams = GREEDY, seed=0,
                 max_new_tokens: int = MAX_NEW_TOKENS, stop_ids: Sequence[int] = ()) -> None:
        self.runner = runner
        self.vocab_size = runner.config.vocab_size
        self.params = params
        self.seed = seed
        self.sampler: RowSampler | None = None  # set by the first append, one stream per row
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
        self.position: np.ndarray | None = None  # [B] absolute position of each row's next
        self.generated = 0  # next_token calls
        self.row_generated: np.ndarray | None = None  # [B] tokens sampled for each row
        self.done: np.ndarray | None = None  # [B] bool
        self._logits: np.ndarray | None = None  # [B,V], of the last fed position
        self._unfed: np.ndarray | None = None  # [B], sampled but not yet fed
        self._seen: np.ndarray | None = None
        self._closed = False

    def append(self, ids) -> None:
        """Feed more tokens (a prompt, or a later turn) to every row. The first input may be
        rows of different lengths (a list of id lists): each length is prefilled apart and
        the rows are joined into one batch."""
        self._check_open("append")
        if self.decoder is None and _is_ragged(ids):
            rows = [check_ids(np.asarray(r)[None], self.vocab_size)[0] for r in ids]
            seeds = row_seeds(self.seed, len(rows))  # refused before any model call
            self.decoder, self._logits = prefill_rows(self.runner, rows)
            self._start(seeds, np.array([len(r) for r in rows], dtype=np.int64))
            if self.sampler.params.repetition_penalty != 1.0:
                self._seen = np.zeros((len(rows), self.vocab_size), dtype=bool)
                for b, r in enumerate(rows):
                    self._seen[b, r] = True
            return
        if _is_ragged(ids):
            raise ScredgeError("a later turn must give every row the same number of tokens",
                               received=sorted({len(r) for r in ids}),
                               expected="one length (rows of any length only as the first "
                                        "input)", fix="append the rows' turns one length at a time")
        rows = np.asarray(ids)
        rows = check_ids(rows[None] if rows.ndim == 1 else rows, self.vocab_size)
        if self.decoder is None:
            seeds = row_seeds(self.seed, rows.shape[0])
            self.decoder = self.runner.decoder(rows.shape[0])
            self._start(seeds, np.zeros(rows.shape[0], dtype=np.int64))
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
        self.position = self.position + rows.shape[1]

    def _start(self, seeds: list, position: np.ndarray) -> None:
        batch = self.batch = len(seeds)
        self.sampler = RowSampler(self.params, seeds)
        self.position = position
        self.done = np.zeros(batch, dtype=bool)
        self.row_generated = np.zeros(batch, dtype=np.int64)
        if self.max_new_tokens == 0:
            self.done[:] = True

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ScredgeError(f"{what}() on a closed generator",
                               received="a generator after close()",
                               expected="an open generator", fix="start a new one")

    def next_token(self) -> np.ndarray:
        """Sample the next token of every row ([B] int64). Rows already done keep going
        until they `leave` (batched rows share every call), their tokens theirs to ignore."""
        self._check_open("next_token")
        if self.decoder is None:
            raise ScredgeError("next_token() before any input",
                               fix="call append(prompt_ids) first")
        if self.is_done():
            raise ScredgeError("generation is done", received=f"{self.generated} new tokens",
                               fix="check is_done() before next_token(), or append() more")
        self._feed_unfed()
        token = sample(self.sampler, self._logits, self._seen)
        self._unfed = token
        self.generated += 1
        self.row_generated += 1
        self.done |= self.row_generated >= self.max_new_tokens
        if self.stop_ids.size:
            self.done |= self._is_stop[token]
        return token

    def _feed_unfed(self) -> None:
        if self._unfed is not None:
            self._logits = decode_step(self.decoder, self._unfed, self.position)
            self.position = self.position + 1
            self._unfed = None

    # ---- the batch's membership -----------------------------------------------------
    def leave(self, rows) -> None:
        """Drop rows (indices into this batch): they are never decoded again, and the rows
        after them move up. Dropping every row ends the generation."""
        self._check_open("leave")
        gone = {int(r) for r in rows}
        if any(not 0 <= r < (self.batch or 0) for r in gone):
            raise ScredgeError("leave() got rows outside the batch", received=sorted(gone),
                               expected=f"indices in 0..{(self.batch or 0) - 1}")
        keep = [r for r in range(self.batch or 0) if r not in gone]
        if not keep:
            self.close()
            self.batch = 0
            return
        if len(keep) != self.batch:
            self.decoder.select(keep)
            self._select(keep)

    def join(self, other: Generator) -> None:
        """Add `other`'s rows (a generator on the same runner with the same sampling
        parameters, e.g. a new request's prompt appended) after this batch's rows, from the
        next step on; `other` is consumed. Each row continues exactly as it would alone."""
        self._check_open("join")
        other._check_open("join")
        if self.decoder is None or other.decoder is None or other.runner is not self.runner:
            raise ScredgeError("join() needs two started generators on the same runner",
                               fix="append a prompt to each first")
        if other.params != self.params:
            raise ScredgeError("joined rows must sample with the same parameters",
                               received=repr(other.params), expected=repr(self.params))
        self._feed_unfed()  # both sides hold the logits of their last fed position
        other._feed_unfed()
        self.decoder.join(other.decoder)
        self.sampler.join(other.sampler)
        if self._seen is not None:
            self._seen = np.concatenate([self._seen, other._seen])
        for name in ("position", "done", "row_generated", "_logits"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))
        self.batch += other.batch
        other.decoder, other._closed = None, True

    def _select(self, keep: list[int]) -> None:
        self.sampler.select(keep)
        for name in ("position", "done", "row_generated", "_logits", "_unfed", "_seen"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value[keep])
        self.batch = len(keep)

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
        return self.done is not None and bool(self.done.all())


def _is_ragged(ids) -> bool:
    """A list of id rows whose lengths differ."""
    if isinstance(ids, np.ndarray) or not isinstance(ids, (list, tuple)) or not ids:
        return False
    if not all(isinstance(r, (list, tuple, np.ndarray)) for r in ids):
        return False
    return len({len(r) for r in ids}) > 1
