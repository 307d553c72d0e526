"""The shared ("in-place") KV cache of SCR_SPEC v3 section 3, on onnxruntime (CPU).

`SharedDecoder` runs a shared-form graph (export/ort_shared_cache.py): per layer one key
and one value buffer [R, Hk, C, Dh] (R rows, capacity C), bound once through IOBinding as
both the graph's past and present, so `GroupQueryAttention` appends each row's new keys in
place. A decode step writes the token, position and length integers into arrays bound by
reference and runs: it allocates nothing and copies no cache. The SCR carries ([R, D],
[R, 1]) alternate between two small sets of buffers (past of one step, present of the
next), as the concat form's steady phase does.

Rows hold their tokens from slot 0 with their own lengths (`seqlens_k`, `query_seqlens`,
`total_sequence_length`), so nothing is ever padded: `join` copies another decoder's rows
into free rows of the buffers, `select`/`leave` drop rows by renumbering (the rows a step
computes are always the first B physical rows, which a leave refills by moving the last
ones into the gaps). With a sliding window W, a row whose next tokens would not fit moves
its last W-1 keys to the front (keys are stored after the rotary embedding, so they stay
valid; the op's local window sees slots, which stay in position order): generation is
unbounded at constant memory. Without a window a full buffer grows (doubling, one copy).
Positions are each row's own absolute ones, given by the caller as for the concat form.
"""

from __future__ import annotations

import time

import numpy as np

from scredge import contract
from scredge.contract import (
    INPUT_IDS,
    LOGITS,
    POSITION_IDS,
    QUERY_SEQLENS,
    SEQLENS_K,
    TOTAL_SEQUENCE_LENGTH,
)
from scredge.errors import ScredgeError
from scredge.runtime.cache import HostState
from scredge.runtime.runners.base import Decoder

MIN_CAPACITY = 256  # the first capacity of an unbounded (no window) cache, in tokens


def default_capacity(window: int | None) -> int:
    """C for a window W: the W-1 kept keys plus as many new ones before the next move, so a
    move (W-1 keys per layer) comes once every W steps; unbounded: MIN_CAPACITY to start."""
    return MIN_CAPACITY if window is None else 2 * window


class SharedDecoder(Decoder):
    """A batch of rows decoding over shared, in-place KV buffers (see the module doc)."""

    def __init__(self, runner, batch: int, capacity: int | None = None) -> None:
        super().__init__(runner, batch)
        import onnxruntime as ort

        if runner.device != "cpu":
            raise ScredgeError("the shared KV-cache form runs on the CPU provider only",
                               received=f"device {runner.device}",
                               expected="device='cpu'", fix="load the artifact with device='cpu'")
        self._ort = ort
        c = runner.config
        self._c = c
        self._capacity = capacity or default_capacity(c.window)
        if c.window is not None and self._capacity < c.window:
            raise ScredgeError("shared cache capacity below the window",
                               received=self._capacity, expected=f">= window {c.window}")
        io = contract.GraphIO.for_config(c)
        self._kv_names = [n for n in io.state_inputs if contract.is_kv(n)]
        self._carry_names = [n for n in io.state_inputs if contract.is_carry(n)]
        self._rows_cap = 0
        self._kv: dict[str, np.ndarray] = {}
        self._carry: list[dict[str, np.ndarray]] = [{}, {}]
        self._set = 0  # which carry set holds the current carries
        self._len = np.zeros(0, np.int32)  # tokens held by each physical row
        self._slot = np.arange(batch)  # logical row i lives in physical row _slot[i]
        self._allocate(batch, self._capacity)
        self._bound: dict = {}  # (B, set) -> IOBinding for T = 1, made once
        self.extra_outputs: list[str] = []  # more graph outputs to fetch (parity's hidden)
        self.last_extra: dict[str, np.ndarray] = {}

    # ---- buffers -----------------------------------------------------------------------
    def _allocate(self, rows: int, capacity: int) -> None:
        """(Re)allocate for `rows` rows of `capacity` tokens, keeping what the rows hold."""
        c, old_rows = self._c, self._rows_cap
        kv_dtype = self.runner.kv_dtype
        kv = {n: np.zeros((rows, c.n_kv_heads, capacity, c.head_dim), kv_dtype)
              for n in self._kv_names}
        for n, a in self._kv.items():
            keep = min(a.shape[2], capacity)
            kv[n][:old_rows, :, :keep] = a[:, :, :keep]
        carry = [{n: np.zeros(contract.state_shape(c, n, rows, 0), np.float32)
                  for n in self._carry_names} for _ in range(2)]
        for s in range(2):
            for n, a in self._carry[s].items():
                carry[s][n][:old_rows] = a
        lengths = np.zeros(rows, np.int32)
        lengths[:old_rows] = self._len
        self._kv, self._carry, self._len = kv, carry, lengths
        self._rows_cap, self._capacity = rows, capacity
        self._bound = {}

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def lengths(self) -> np.ndarray:
        """Tokens each row's buffer holds, in batch order."""
        return self._len[self._slot].copy()

    def _make_room(self, new: int) -> None:
        """Before `new` tokens: every row must have room. Window: rows that would overflow
        keep their last W-1 keys at the front; no window: the buffers grow."""
        B = self.batch
        need = int(self._len[:B].max(initial=0)) + new
        if need <= self._capacity:
            return
        W = self._c.window
        if W is None:
            cap = self._capacity
            while cap < need:
                cap *= 2
            self._allocate(self._rows_cap, cap)
            return
        keep = W - 1
        for r in np.flatnonzero(self._len[:B] + new > self._capacity):
            n = int(self._len[r])
            for a in self._kv.values():  # overlapping ranges: copy the source first
                a[r, :, :keep] = a[r, :, n - keep:n].copy()
            self._len[r] = keep

    # ---- one call ----------------------------------------------------------------------
    def step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        self._check_live()
        B, T = ids.shape
        if B != self.batch:
            raise ScredgeError("step() rows differ from the batch", received=B,
                               expected=self.batch)
        room = self._capacity - (0 if self._c.window is None else self._c.window - 1)
        if self._c.window is not None and T > room:  # a long prompt: chunks that fit
            parts, extras = [], []
            for s in range(0, T, room):  # one step() to the caller, several calls here
                parts.append(self._call(ids[:, s:s + room], positions[:, s:s + room]).copy())
                extras.append(self.last_extra)
            self.last_extra = {n: np.concatenate([e[n] for e in extras], axis=1)
                               for n in self.extra_outputs}
            return np.concatenate(parts, axis=1)
        return self._call(ids, positions)

    def _call(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """One graph call of T tokens that fit the buffers once room is made."""
        B, T = ids.shape
        self._make_room(T)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        identity = np.array_equal(self._slot, np.arange(B))
        if not identity:  # physical row order
            order = np.argsort(self._slot)
            ids, positions = ids[order], positions[order]
        if T == 1 and not self.extra_outputs:
            logits = self._decode_step(ids, positions)
        else:
            logits = self._general_step(ids, positions)
        self.past = int(self._len[:B].max(initial=0))
        return logits if identity else logits[self._slot]

    def _lengths_in(self, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        B = self.batch
        after = self._len[:B] + T
        return ((after - 1).astype(np.int32), np.array(after.max(), np.int32),
                np.full(B, T, np.int32))

    def _bind_state(self, b, B: int, src: int) -> None:
        ov = self._ort.OrtValue.ortvalue_from_numpy
        for n, a in self._kv.items():  # past and present: the same memory
            v = ov(a[:B])
            b.bind_ortvalue_input(n, v)
            b.bind_ortvalue_output(contract.present_name(n), v)
        for n in self._carry_names:
            b.bind_ortvalue_input(n, ov(self._carry[src][n][:B]))
            b.bind_ortvalue_output(contract.present_name(n), ov(self._carry[src ^ 1][n][:B]))

    def _decode_step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """T = 1: the prepared binding of this batch size and carry set; writes integers."""
        B = self.batch
        key = (B, self._set)
        if key not in self._bound:
            self._bound[key] = self._prepare(B)
        b, arrays = self._bound[key]
        seq, total, query = self._lengths_in(1)
        arrays[INPUT_IDS][:] = ids
        arrays[POSITION_IDS][:] = positions
        arrays[SEQLENS_K][:] = seq
        arrays[TOTAL_SEQUENCE_LENGTH][...] = total
        arrays[QUERY_SEQLENS][:] = query
        t0 = time.perf_counter()
        self.runner.session.run_with_iobinding(b)
        self.last_run_s = time.perf_counter() - t0
        self._len[:B] += 1
        self._set ^= 1
        return arrays[LOGITS]  # overwritten by the next step of this set: read it first

    def _prepare(self, B: int):
        ov = self._ort.OrtValue.ortvalue_from_numpy
        arrays = {INPUT_IDS: np.zeros((B, 1), np.int64), POSITION_IDS: np.zeros((B, 1), np.int64),
                  SEQLENS_K: np.zeros(B, np.int32), TOTAL_SEQUENCE_LENGTH: np.zeros((), np.int32),
                  QUERY_SEQLENS: np.ones(B, np.int32),
                  LOGITS: np.zeros((B, 1, self._c.vocab_size), np.float32)}
        b = self.runner.session.io_binding()
        for name, a in arrays.items():
            if name == LOGITS:
                b.bind_ortvalue_output(name, ov(a))
            else:
                b.bind_ortvalue_input(name, ov(a))
        self._bind_state(b, B, self._set)
        return b, arrays

    def _general_step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """A prefill or chunk (T > 1), or a call fetching extra outputs: bound afresh."""
        B, T = ids.shape
        seq, total, query = self._lengths_in(T)
        b = self.runner.session.io_binding()
        for name, a in ((INPUT_IDS, ids), (POSITION_IDS, positions), (SEQLENS_K, seq),
                        (TOTAL_SEQUENCE_LENGTH, total), (QUERY_SEQLENS, query)):
            b.bind_cpu_input(name, a)
        b.bind_output(LOGITS, "cpu")  # first: outputs come back in binding order
        for name in self.extra_outputs:
            b.bind_output(name, "cpu")
        self._bind_state(b, B, self._set)
        t0 = time.perf_counter()
        self.runner.session.run_with_iobinding(b)
        self.last_run_s = time.perf_counter() - t0
        names = [LOGITS, *self.extra_outputs]
        values = b.get_outputs()
        out = {n: values[i].numpy() for i, n in enumerate(names)}
        self._len[:B] += T
        self._set ^= 1
        self.last_extra = {n: out[n] for n in self.extra_outputs}
        return out[LOGITS]

    # ---- membership: join into free rows, leave by renumbering --------------------------
    def join(self, *others: Decoder) -> None:
        """Append the rows of `others` (shared decoders of the same runner, e.g. a prompt
        prefilled alone) after this batch's rows, each copied into a free physical row;
        they are released."""
        for other in others:
            if other is self or other.runner is not self.runner or not isinstance(
                    other, SharedDecoder):
                raise ScredgeError("join() takes other decoders of the same runner",
                                   received="itself" if other is self else type(other).__name__,
                                   expected="a decoder from this runner's decoder(batch)")
            other._check_live()
        self._check_live()
        B = self.batch
        add = sum(o.batch for o in others)
        longest = max([self._capacity, *(int(o._len[:o.batch].max(initial=0)) for o in others)])
        if B + add > self._rows_cap or longest > self._capacity:
            self._allocate(max(B + add, self._rows_cap), max(longest, self._capacity))
        slots = list(self._slot)
        row = B
        for o in others:
            for i in range(o.batch):
                src = int(o._slot[i])
                n = int(o._len[src])
                for name, a in self._kv.items():
                    a[row, :, :n] = o._kv[name][src, :, :n]
                for name in self._carry_names:
                    self._carry[self._set][name][row] = o._carry[o._set][name][src]
                self._len[row] = n
                slots.append(row)
                row += 1
            o.release()
        self._slot = np.asarray(slots)
        self.batch = B + add
        self.past = int(self._len[:self.batch].max(initial=0))

    def select(self, rows) -> None:
        """Keep the rows `rows` (indices into this batch, in the order given). The kept
        rows' physical slots are made 0..B'-1 by moving rows from above into the gaps."""
        rows = [int(r) for r in rows]
        if not rows or any(not 0 <= r < self.batch for r in rows) or len(set(rows)) != len(rows):
            raise ScredgeError("invalid rows to keep", received=rows,
                               expected=f"distinct indices in 0..{self.batch - 1}, at least one",
                               fix="release() the decoder when no row is left")
        self._check_live()
        slots = [int(self._slot[r]) for r in rows]
        n = len(slots)
        free = sorted(set(range(n)) - set(slots))
        for i, s in enumerate(slots):
            if s >= n:  # move it down into a free low row
                dst = free.pop(0)
                self._move(s, dst)
                slots[i] = dst
        self._slot = np.asarray(slots)
        self.batch = n
        self.past = int(self._len[:n].max(initial=0))

    def _move(self, src: int, dst: int) -> None:
        n = int(self._len[src])
        for a in self._kv.values():
            a[dst, :, :n] = a[src, :, :n]
        for name in self._carry_names:
            self._carry[self._set][name][dst] = self._carry[self._set][name][src]
        self._len[dst] = n

    # ---- the state on the host (parity, checks) ----------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """The concat form's view of the state (past_* names): each row's last
        present_len keys; defined when every row holds the same number of tokens."""
        B = self.batch
        lengths = self._len[self._slot]
        if len(set(lengths.tolist())) > 1:
            raise ScredgeError("rows of unequal length have no concat-form state",
                               received=lengths.tolist(), expected="equal lengths")
        n = int(lengths[0]) if B else 0
        keep = min(n, self._c.max_cache) if self._c.window is not None else n
        out = {name: a[self._slot][:, :, n - keep:n].copy() for name, a in self._kv.items()}
        out.update({name: a[self._slot].copy()
                    for name, a in self._carry[self._set].items()})
        return out

    def host_state(self) -> HostState:
        """The state in the concat form (SCR_SPEC section 3), copied: each row's last keys
        (W-1 at most with a window, as the concat form keeps) right-aligned, left-padded
        to the longest row with mask 0, and the SCR carries. What speculative decoding
        snapshots and rolls back to (`load_state`); rows change hands with join/select."""
        self._check_live()
        B, c = self.batch, self._c
        slots = self._slot[:B]
        n = self._len[slots].astype(np.int64)
        keep = n if c.window is None else np.minimum(n, c.max_cache)
        P = int(keep.max(initial=0))
        mask = np.zeros((B, P), np.int64)
        arrays = {}
        for name, a in self._kv.items():
            out = np.zeros((B, *a.shape[1:2], P, a.shape[3]), a.dtype)
            for b, (s, m, k) in enumerate(zip(slots, n, keep)):
                out[b, :, P - k:] = a[s, :, m - k:m]
                mask[b, P - k:] = 1
            arrays[name] = out
        arrays.update({name: a[slots].copy() for name, a in self._carry[self._set].items()})
        return HostState(arrays, mask)

    def load_state(self, state: HostState) -> None:
        """Continue from a concat-form `state` (`host_state`'s, or joined ones): each row's
        real slots (mask 1) are copied to the front of a row of the buffers; no pads."""
        self._check_live()
        B = state.batch
        real = state.mask.astype(bool)
        counts = real.sum(axis=1)
        longest = int(counts.max(initial=0))
        cap = self._capacity
        while cap < longest:  # no window only: a window's state holds W-1 < C keys
            cap *= 2
        if B > self._rows_cap or cap > self._capacity:
            self._allocate(max(B, self._rows_cap), cap)
        for name, a in self._kv.items():
            src = state.arrays[name]
            for b in range(B):
                a[b, :, :counts[b]] = src[b][:, real[b]]
        for name, a in self._carry[self._set].items():
            a[:B] = state.arrays[name]
        self._len[:B] = counts
        self._slot = np.arange(B)
        self.batch, self.past = B, longest

    def release(self) -> None:
        self.released = True
        self._bound = {}
