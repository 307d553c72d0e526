"""Running the decoder: the model calls of generation (`prefill`, `decode_step`, the
prefill of prompts of any lengths into one batch) and the checks of what they are fed.
The batching core (runtime/batch.py) and the `Generator` are built on these."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence

import numpy as np

from scredge.errors import ScredgeError
from scredge.limits import PREFILL_CHUNK  # re-exported: the core's callers import it here
from scredge.runtime.runners.base import Decoder, Runner
from scredge.sampling import Sampler, mark_seen

MAX_NEW_TOKENS = 100_000_000  # beyond this a request is a mistake, not a plan


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


def check_stop_ids(stop_ids: Iterable, vocab_size: int) -> np.ndarray:
    """Stop token ids, sorted and unique; ids outside the vocabulary can never be sampled,
    so they are left out (and an id beyond int64 cannot overflow the array)."""
    stop_ids = list(stop_ids)
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in stop_ids):
        raise ScredgeError("stop_ids must be token ids", received=repr(stop_ids)[:80],
                           expected="integers")
    return np.array(sorted({int(i) for i in stop_ids if 0 <= i < vocab_size}), dtype=np.int64)


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


def prefill_rows(runner: Runner, rows: Sequence[np.ndarray], chunk: int = PREFILL_CHUNK,
                 cut: Callable[[list[int]], Collection[int]] | None = None,
                 ) -> tuple[Decoder | None, np.ndarray]:
    """Prompts of any lengths -> one decoder holding them all, rows in the given order, and
    the logits of each prompt's last position [B,V]. Prompts of equal length are prefilled
    together, each group alone, `chunk` positions a call; the groups are then joined
    (SCR_SPEC section 3: shorter caches left-padded, mask 0 there), so every row continues
    exactly as it would alone.

    `cut` (cancellation): called before each chunk of a group with the rows (indices into
    `rows`) still being prefilled; the ones it returns leave now, their prefill not run to
    the end (a client gone, a deadline passed). The result then holds only the rows never
    cut, in order (None and [0,V] logits when every row was cut)."""
    check_prefill_chunk(chunk)
    groups: dict[int, list[int]] = {}
    for b, row in enumerate(rows):
        groups.setdefault(len(row), []).append(b)
    decoders, logits, order = [], [], []
    try:
        for members in groups.values():
            dec = runner.decoder(len(members))
            decoders.append(dec)
            ids = np.stack([rows[b] for b in members])
            last, members = _prefill_group(dec, ids, members, chunk, cut)
            if not members:
                decoders.pop().release()
                continue
            logits.append(last)
            order += members
        if not decoders:
            return None, np.zeros((0, runner.config.vocab_size), np.float32)
        first = decoders[0]
        if len(decoders) > 1:
            first.join(*decoders[1:])
        if order != sorted(order):
            first.select(np.argsort(order))  # back to the callers' order
    except BaseException:
        for dec in decoders:
            dec.close()
        raise
    return first, np.concatenate(logits)[np.argsort(order)]


def _prefill_group(dec: Decoder, ids: np.ndarray, members: list[int], chunk: int,
                   cut) -> tuple[np.ndarray | None, list[int]]:
    """One group of equal-length prompts from position 0, chunk by chunk, its rows cut
    between chunks as `cut` says: (last-position logits of the rows left, those rows)."""
    T = ids.shape[1]
    for s in range(0, T, chunk):
        gone = set(cut(list(members))) if cut is not None else ()
        if gone:
            keep = [i for i, m in enumerate(members) if m not in gone]
            members = [members[i] for i in keep]
            if not members:
                return None, []
            dec.select(keep)
            ids = ids[keep]
        part = ids[:, s:s + chunk]
        logits = dec.step(part, positions(s, len(members), part.shape[1]))
    return logits[:, -1], members


def check_prefill_chunk(chunk: object) -> int:
    if not isinstance(chunk, (int, np.integer)) or isinstance(chunk, bool) or chunk < 1:
        raise ScredgeError("invalid prefill chunk", received=repr(chunk),
                           expected="a positive number of tokens per prefill call")
    return int(chunk)


def sample(sampler: Sampler, logits: np.ndarray, seen: np.ndarray | None) -> np.ndarray:
    """logits [B,V] -> ids [B]; marks them in `seen` [B,V] (None: the sampler keeps none)."""
    ids = sampler(logits, seen)
    mark_seen(seen, ids)
    return ids
