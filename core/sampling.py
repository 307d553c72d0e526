"""The one token sampler, in NumPy, shared by the reference loop and every runtime backend.

Same seed and same logits give the same tokens whatever produced the logits,
so a backend is checked by its logits alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scredge.errors import ScredgeError
from scredge.limits import MAX_TEMPERATURE, REPETITION_PENALTY_RANGE


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = no top-k cut
    top_p: float = 1.0  # 1 = no nucleus cut
    repetition_penalty: float = 1.0  # 1 = off; CTRL/HF convention

    def __post_init__(self) -> None:
        """Every field checked here, the one place the CLI, the API and the server build
        parameters through: types, and bounds (core/limits.py) inside which the sampler's
        float64 arithmetic cannot overflow."""
        def bad(name: str, value: object, expected: str) -> None:
            raise ScredgeError(
                f"invalid sampling parameter '{name}'", received=repr(value)[:80],
                expected=expected)

        lo, hi = REPETITION_PENALTY_RANGE
        if not (_is_real(self.temperature) and 0 <= self.temperature <= MAX_TEMPERATURE):
            bad("temperature", self.temperature,
                f"a number in [0, {MAX_TEMPERATURE:g}] (0 = greedy)")
        if not isinstance(self.top_k, (int, np.integer)) or isinstance(self.top_k, bool) or (
                self.top_k < 0):
            bad("top_k", self.top_k, "an integer >= 0 (0 = off)")
        if not (_is_real(self.top_p) and 0.0 < self.top_p <= 1.0):
            bad("top_p", self.top_p, "a number in (0, 1]")
        if not (_is_real(self.repetition_penalty) and lo <= self.repetition_penalty <= hi):
            bad("repetition_penalty", self.repetition_penalty,
                f"a number in [{lo:g}, {hi:g}] (1 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


_HUGE = float(np.finfo(np.float64).max)


def _is_real(v: object) -> bool:
    """A real number (NumPy's too), not a bool; NaN and infinities are the callers' to test."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def check_seed(seed: object) -> int | None:
    """None (fresh entropy) or an integer >= 0, what NumPy's generator takes."""
    if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool)
                             or seed < 0):
        raise ScredgeError("invalid seed", received=repr(seed)[:80],
                           expected="an integer >= 0, or None for a fresh random seed")
    return None if seed is None else int(seed)


GREEDY = SamplingParams(temperature=0.0)


def seen_mask(rows: np.ndarray, vocab_size: int) -> np.ndarray:
    """ids [B,S] -> bool [B,V], True where a row contains the id."""
    mask = np.zeros((rows.shape[0], vocab_size), dtype=bool)
    mark_seen(mask, rows)
    return mask


def mark_seen(seen: np.ndarray | None, ids: np.ndarray) -> None:
    """Mark ids [B] or [B,S] in the mask [B,V]; nothing when no sampler reads one (None)."""
    if seen is not None:
        np.put_along_axis(seen, np.asarray(ids, dtype=np.int64).reshape(len(seen), -1), True,
                          axis=1)


class Sampler:
    """Picks the next token of each row from float logits `[B, V]`."""

    def __init__(self, params: SamplingParams = GREEDY, seed: int | None = 0) -> None:
        self.params = params
        self._rng = np.random.default_rng(check_seed(seed))

    def history(self, rows: np.ndarray, vocab_size: int) -> np.ndarray | None:
        """The seen-ids mask [B,V] of the prompt `rows` [B,S] when sampling reads one (only
        the repetition penalty does), else None: greedy and plain sampling keep no history,
        so a decode step spends nothing on it."""
        return seen_mask(rows, vocab_size) if self.params.repetition_penalty != 1.0 else None

    def __call__(self, logits: np.ndarray, seen: np.ndarray | None = None) -> np.ndarray:
        """logits [B,V] -> ids [B] int64. `seen` [B,V] bool marks ids already in each row
        (prompt and output), for the repetition penalty: constant memory however long the
        generation runs."""
        p = self.params
        logits = np.asarray(logits)
        if np.isnan(logits).any():  # argmax would silently answer the first NaN's id
            nans = int(np.isnan(logits).sum())
            raise ScredgeError("the model produced NaN logits",
                               received=f"{nans} NaN values in logits {logits.shape}",
                               expected="finite logits",
                               fix="check the artifact (scredge parity) and its dtype; a "
                                   "float16 export of a model with large activations "
                                   "overflows")
        if p.greedy and p.repetition_penalty == 1.0:  # the hot path: no copy, no float64
            return np.asarray(logits).argmax(axis=-1).astype(np.int64)
        x = self._penalised(logits, seen)
        if p.greedy:
            return x.argmax(axis=-1).astype(np.int64)
        return draw(self._probs(x), self._uniforms(x.shape[0]))

    def distribution(self, logits: np.ndarray, seen: np.ndarray | None = None) -> np.ndarray:
        """The probabilities [B,V] float64 that `__call__` draws from (one-hot at the argmax
        when greedy): what speculative decoding's acceptance test compares against."""
        x = self._penalised(logits, seen)
        if self.params.greedy:
            out = np.zeros(x.shape, dtype=np.float64)
            np.put_along_axis(out, x.argmax(axis=-1)[:, None], 1.0, axis=-1)
            return out
        return self._probs(x)

    def _penalised(self, logits: np.ndarray, seen: np.ndarray | None) -> np.ndarray:
        p = self.params
        x = np.asarray(logits, dtype=np.float64)  # a fresh copy: the caller's array is kept
        assert x.ndim == 2, "logits must be [B, V]"
        if p.repetition_penalty != 1.0 and seen is not None:
            # float32/float16 logits times a penalty in REPETITION_PENALTY_RANGE stay far
            # inside float64's range; the clip keeps even float64 input finite
            with np.errstate(over="ignore"):
                penalised = np.where(x > 0, x / p.repetition_penalty, x * p.repetition_penalty)
            x = np.where(seen, np.clip(penalised, -_HUGE, _HUGE), x)
        return x

    def _probs(self, x: np.ndarray) -> np.ndarray:
        """Penalised logits [B,V] -> the temperature, top-k and top-p distribution [B,V]."""
        p = self.params
        with np.errstate(over="ignore"):
            scaled = x / p.temperature
            if np.isinf(scaled).any():  # a temperature so small that x / T overflows:
                # scale from the max, so the argmax keeps all the mass instead of NaNs
                scaled = (x - x.max(axis=-1, keepdims=True)) / p.temperature
        x = scaled
        if p.top_k and p.top_k < x.shape[-1]:
            kth = np.partition(x, -p.top_k, axis=-1)[:, -p.top_k][:, None]  # [B,1]
            x = np.where(x < kth, -np.inf, x)
        probs = _softmax(x)  # [B,V]
        if p.top_p < 1.0:
            order = np.argsort(-probs, axis=-1, kind="stable")  # [B,V]
            sorted_p = np.take_along_axis(probs, order, axis=-1)
            # keep the smallest prefix whose mass reaches top_p (the first token always stays)
            drop_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p >= p.top_p
            drop = np.zeros_like(drop_sorted)
            np.put_along_axis(drop, order, drop_sorted, axis=-1)
            probs = np.where(drop, 0.0, probs)
            probs /= probs.sum(axis=-1, keepdims=True)
        return probs

    def uniforms(self, n: int) -> np.ndarray:
        """The next n uniforms of the sampler's random stream (one per row for a
        RowSampler): speculative decoding's acceptance draws come from the same stream."""
        return self._uniforms(n)

    def _uniforms(self, n: int) -> np.ndarray:
        return self._rng.random(n)


class RowSampler(Sampler):
    """One random stream per row, seeded by that row's seed: row k draws exactly what its
    prompt alone would draw with that seed (`Sampler(params, seed)` on a batch of one),
    whatever else shares the batch. Rows leave (`select`) and join (`join`) with their
    streams, as sequences leave and join a running batch."""

    def __init__(self, params: SamplingParams, seeds) -> None:
        self.params = params
        self._rngs = [np.random.default_rng(s) for s in seeds]

    def _uniforms(self, n: int) -> np.ndarray:
        assert n == len(self._rngs), "one random stream per row"
        return np.array([rng.random() for rng in self._rngs])

    def select(self, rows) -> None:
        """Keep the streams of `rows`, in that order."""
        self._rngs = [self._rngs[int(r)] for r in rows]

    def join(self, other: RowSampler) -> None:
        """Append `other`'s rows (same parameters) after these."""
        if other.params != self.params:
            raise ScredgeError("joined rows must sample with the same parameters",
                               received=repr(other.params), expected=repr(self.params))
        self._rngs += other._rngs


def row_seeds(seed, batch: int) -> list:
    """Each row's seed: `seed` (an integer >= 0, or None) for every row, or a sequence of
    one per row; each checked by `check_seed`."""
    if not isinstance(seed, (list, tuple, np.ndarray)):
        return [check_seed(seed)] * batch
    seeds = list(seed)
    if len(seeds) != batch:
        raise ScredgeError("invalid seed: a list of seeds needs one per prompt",
                           received=f"{len(seeds)} seeds for {batch} prompts",
                           expected=f"an int, None, or {batch} of them (one per row)")
    return [check_seed(s) for s in seeds]


def draw(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw: probs [B,V] (need not sum to 1), one uniform per row -> ids [B]."""
    cdf = np.cumsum(probs, axis=-1)
    ids = (cdf < np.asarray(u)[:, None] * cdf[:, -1:]).sum(axis=-1)
    return np.minimum(ids, probs.shape[-1] - 1).astype(np.int64)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)
