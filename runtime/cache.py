"""KV and SCR state as named host arrays (SCR_SPEC section 3): the empty state for a first
call, the next call's inputs from a call's outputs, and (v2) the cache's attention mask with
the join that puts rows of unequal length into one batch; and `BatchCache`, the interface
the batching core (runtime/batch.py) holds a decoder's state by. Torch-free."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from scredge import contract
from scredge.config import SCRConfig


def empty_state(c: SCRConfig, batch: int, kv_dtype=np.float32) -> dict[str, np.ndarray]:
    """P = 0 caches and zero SCR carries for `batch` rows."""
    return {name: np.zeros(contract.state_shape(c, name, batch, 0),
                           dtype=contract.tensor_dtype(name, kv_dtype))
            for name in contract.GraphIO.for_config(c).state_inputs}


def state_from_outputs(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The next call's state inputs from a call's outputs (other outputs are dropped)."""
    return {contract.past_name(name): value for name, value in outputs.items()
            if contract.is_state_output(name)}


# ---- the attention mask and the join of SCR_SPEC section 3 (v2) -------------------------
def feed_mask(cache_mask: np.ndarray, new: int) -> np.ndarray:
    """The call's `attention_mask` [B,P+T]: the cache's mask [B,P], then T ones (new tokens
    are never pads)."""
    B, P = cache_mask.shape
    out = np.ones((B, P + new), dtype=np.int64)
    out[:, :P] = cache_mask
    return out


def trim_mask(full: np.ndarray, present: int) -> np.ndarray:
    """The cache's mask after a call: the last P' columns, trimmed with the cache."""
    return np.ascontiguousarray(full[:, full.shape[1] - present:])


@dataclass
class HostState:
    """A decoder's whole state on the host: the graph's state inputs (`past_key_values.*`,
    `scr_past.*`) and the cache's mask [B,P] int64 (0 = a pad slot left by a join)."""

    arrays: dict[str, np.ndarray]
    mask: np.ndarray

    @property
    def batch(self) -> int:
        return self.mask.shape[0]

    @property
    def past(self) -> int:
        return self.mask.shape[1]


def join_states(states: Sequence[HostState]) -> HostState:
    """One batch from several, rows in order: each cache left-padded with zeros to the
    longest P, mask 0 in those slots; SCR carries stacked as they are (SCR_SPEC section 3).
    Every row then gets exactly the logits it would get alone."""
    P = max(s.past for s in states)
    arrays = {}
    for name in states[0].arrays:
        parts = [s.arrays[name] for s in states]
        if contract.is_kv(name):  # [B,Hk,p,Dh] -> [B,Hk,P,Dh]
            parts = [np.pad(a, ((0, 0), (0, 0), (P - a.shape[2], 0), (0, 0))) for a in parts]
        arrays[name] = np.concatenate(parts, axis=0)
    mask = np.concatenate([np.pad(s.mask, ((0, 0), (P - s.past, 0))) for s in states])
    return HostState(arrays, mask.astype(np.int64, copy=False))


def select_rows(state: HostState, rows: Sequence[int]) -> HostState:
    """The rows `rows` of a batch, in that order (a finished row leaves; rows reorder). Cache
    slots that are pads in every kept row are dropped, so P shrinks with the longest row."""
    idx = np.asarray(rows, dtype=np.int64)
    mask = state.mask[idx]
    real = np.flatnonzero(mask.any(axis=0))
    first = int(real[0]) if real.size else mask.shape[1]
    arrays = {}
    for name, a in state.arrays.items():
        a = a[idx]
        if contract.is_kv(name):
            a = a[:, :, first:]
        arrays[name] = np.ascontiguousarray(a)
    return HostState(arrays, np.ascontiguousarray(mask[:, first:]))


class BatchCache(Protocol):
    """What the batching core (runtime/batch.py) asks of a decoder's state: run a chunk,
    and change which rows the batch holds between two calls. `Decoder` implements it with
    the concat form (join left-pads and concatenates host copies, select slices them); an
    in-place shared cache (SCR_SPEC v3 section 3: rows from slot 0 with their own lengths,
    a join writing into a free row) implements the same four calls without the core
    changing."""

    batch: int

    def step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """ids, positions [B,T] -> logits [B,T,V]; the state moves on by T per row."""

    def join(self, *others: BatchCache) -> None:
        """Append the rows of `others` (same runner) after these; they are released."""

    def select(self, rows: Sequence[int]) -> None:
        """Keep the rows `rows`, in that order; the others are never computed again."""

    def release(self) -> None:
        """Done with it: the runner may reuse its buffers."""

    def close(self) -> None:
        """Free it now (after a failure)."""
