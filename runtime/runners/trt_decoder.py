"""The TensorRT decoder: KV and SCR state in device memory for a whole generation.

`DecoderState` is what a decoder holds on the GPU: a stream, its execution context(s), the
id / position / logits buffers, and two state sets sized for the full cache. A call reads
one set and writes the other, then they swap (SCR_SPEC section 3: a call's `present.*` are
exactly the next call's `past.*`), so only two address maps ever occur and they are built
once. Per token only the ids and positions go up and the logits come down. The runner
keeps released states and hands them to the next decoder of the same batch size, so a
generation does not pay for a new context and cache (`TrtRunner.decoder`).

`TrtDecoder` is one generation's view of a state: P, which set holds the past, the
shapes of the last call. It is never reused itself: a stale handle to a released decoder
is refused, it cannot reach the state the next generation owns.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from scredge import contract
from scredge.contract import past_name
from scredge.errors import ScredgeError
from scredge.runtime.cache import state_from_outputs
from scredge.runtime.runners.base import Decoder
from scredge.runtime.runners.trt_context import Context, DeviceBuffers
from scredge.runtime.runners.trt_graphs import DecodeGraphs
from scredge.runtime.trt_profiles import DECODE, PREFILL


class DecoderState:
    """One decoder's device resources, kept across generations (see the module doc)."""

    def __init__(self, runner, batch: int) -> None:
        c, lim = runner.config, runner.limits
        self.batch, self.cuda = batch, runner.cuda
        self.buffers = DeviceBuffers(runner.cuda)
        self.closed = False
        # bound to the engine, not the runner (idle states sit in the runner: holding it
        # would be a cycle), and not to this state (the graphs hold it: same reason), so a
        # dropped state is freed at once by reference counting, not at the next GC pass
        new_context = functools.partial(Context.create, runner.engine, runner.runtime_config,
                                        self.buffers.stream)
        try:
            self.contexts = [new_context()]
            rows = lim.max_prefill
            self.ids = self.buffers.alloc(batch * rows * 8)
            self.pos = self.buffers.alloc(batch * rows * 8)
            self.logits = self.buffers.alloc(batch * rows * c.vocab_size * 4)
            # attention_mask [B,P+T]: P+T <= max_prefill (prefill) or the cache + 1 (decode)
            self.mask_slots = batch * max(rows, lim.cache + 1)
            self.mask = self.buffers.alloc(self.mask_slots * 8)
            self.mask_ones = 0  # leading int64 ones the mask buffer holds
            # each state tensor at its largest: the output shapes of a call filling the cache
            self.state_outputs = runner.output_names[1:]
            full = runner.output_shapes(batch, 0, lim.cache)
            nbytes = {past_name(o): int(np.prod(full[o])) * runner.input_metadata[past_name(o)]
                      .dtype.itemsize for o in self.state_outputs}
            self.state_inputs = list(nbytes)
            self.sets: list[dict[str, int]] = [
                {n: self.buffers.alloc(size) for n, size in nbytes.items()} for _ in range(2)]
        except BaseException:
            self.buffers.close()
            raise
        self._carry_bytes = {n: s for n, s in nbytes.items() if contract.is_carry(n)}
        # a call whose past is in set k writes its present into set 1-k
        self.addresses = [
            {contract.INPUT_IDS: self.ids, contract.POSITION_IDS: self.pos,
             contract.ATTENTION_MASK: self.mask,
             contract.LOGITS: self.logits,
             **self.sets[k], **{o: self.sets[1 - k][past_name(o)] for o in self.state_outputs}}
            for k in (0, 1)]
        # P of a steady decode call (shapes and addresses repeat): a full windowed cache;
        # a window = null cache grows every call and never repeats
        self.steady_past = lim.cache if c.window is not None and lim.cache > 0 else -1
        # the graphs share the contexts list, and add set 1's context to it when needed
        self.graphs = DecodeGraphs(self.contexts, new_context, self.buffers.stream,
                                   runner.cuda, runner.cuda_graph)

    def begin(self) -> None:
        """The empty state for a new generation: P = 0 comes with the caller's first
        shapes; here the SCR carry the first call reads is zeroed (num = 0, den = 0;
        SCR_SPEC section 2) and the last generation's graphs are dropped (captured again)."""
        if self.closed:
            raise ScredgeError("this decoder state was closed", received="a closed state",
                               expected="a live one", fix="take a decoder from the runner")
        self.graphs.drop()
        for n, size in self._carry_bytes.items():
            self.cuda.zero(self.sets[0][n], size, self.buffers.stream)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.graphs.close()
            self.buffers.close()
            self.contexts.clear()

    def __del__(self) -> None:
        if not getattr(self, "closed", True) and getattr(self, "buffers", None) is not None:
            try:
                self.close()
            except Exception:  # noqa: BLE001 - a finalizer: at interpreter exit the CUDA
                pass  # runtime may be unloaded already, and the driver frees it all anyway


class TrtDecoder(Decoder):
    """One generation on a `DecoderState`: state in two device buffer sets that swap."""

    def __init__(self, runner, batch: int, state: DecoderState | None = None) -> None:
        runner.limits.check(batch, 0, 1)  # batch within the profiles, before any CUDA call
        super().__init__(runner, batch)
        self._state = state if state is not None else DecoderState(runner, batch)
        self._state.begin()
        runner.track_graphs(self._state.graphs)
        self._shapes_key: tuple[int, int] | None = None  # (T, P) of the last call's shapes
        self._shapes: dict[str, tuple] = {}
        self.current = 0  # index of the set holding this call's past

    def _live(self) -> DecoderState:
        self._check_live()
        return self._state

    def step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        self._live()
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        if ids.ndim != 2 or ids.shape != positions.shape or ids.shape[0] != self.batch \
                or ids.shape[1] < 1:
            raise ScredgeError("ids and positions must be [B,T] with this decoder's batch",
                               received=f"ids {list(ids.shape)}, positions "
                                        f"{list(positions.shape)}",
                               expected=f"[{self.batch}, T >= 1] both")
        T = ids.shape[1]
        self.runner.limits.check(self.batch, self.past, T)
        if self.past > 0 and T > 1:
            # neither profile covers T > 1 with a cache: feed the tokens one by one (decode
            # profile), which is what the graph computes for a chunk (SCR_SPEC section 2)
            return np.concatenate([self._one(ids[:, i:i + 1], positions[:, i:i + 1])
                                   for i in range(T)], axis=1)
        return self._one(ids, positions)

    def _one(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        runner, st, c = self.runner, self._state, self.runner.config
        cuda, stream = runner.cuda, st.buffers.stream
        B, T = ids.shape
        P = self.past
        cuda.upload(st.ids, ids, stream)
        cuda.upload(st.pos, positions, stream)
        if self.padded:  # a joined batch's pads are in the cache: this call's mask goes up
            cuda.upload(st.mask, self._next_mask(T), stream)
            st.mask_ones = 0
        elif st.mask_ones < B * (P + T):  # every slot real: ones, sent once per state
            cuda.upload(st.mask, np.ones(st.mask_slots, np.int64), stream)
            st.mask_ones = st.mask_slots
        if self._shapes_key != (T, P):  # steady decode (T = 1, P = W-1) reuses the last ones
            self._shapes = {**{n: (B, T) for n in contract.TOKEN_INPUTS},
                            contract.ATTENTION_MASK: (B, P + T)}
            for n in st.state_inputs:
                self._shapes[n] = tuple(P if d == contract.PAST else B if d == contract.BATCH else d
                                        for d in runner.input_metadata[n].shape)
            self._shapes_key = (T, P)
        logits = np.empty((B, T, c.vocab_size), np.float32)
        t0 = time.perf_counter()
        if st.graphs.active and T == 1 and P == st.steady_past:
            # steady decode: the cache is full, so shapes repeat and addresses alternate
            st.graphs.run(self.current, self._shapes, st.addresses[self.current])
        else:
            st.contexts[0].run(PREFILL if P == 0 else DECODE, self._shapes,
                               st.addresses[self.current])
        cuda.download(logits, st.logits, stream)
        cuda.sync(stream)
        self.last_run_s = time.perf_counter() - t0
        self.current = 1 - self.current
        self.past = c.present_len(P, T)
        return logits

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return self.state()

    def _load_arrays(self, arrays: dict[str, np.ndarray], batch: int) -> None:
        """Upload `arrays` into set 0; another batch size takes a state of that size (from
        the runner's idle ones, or new) and hands this one back."""
        runner = self.runner
        if batch != self.batch:
            old, self._state = self._state, runner.state_for(batch)
            runner.take_back(old)
            runner.track_graphs(self._state.graphs)
        st = self._state
        st.graphs.drop()  # captured for another state: captured again once steady
        for name, a in arrays.items():
            st.cuda.upload(st.sets[0][name], np.ascontiguousarray(a), st.buffers.stream)
        st.cuda.sync(st.buffers.stream)
        self.current, self._shapes_key = 0, None

    def state(self) -> dict[str, np.ndarray]:
        """The current state copied to the host (for checks; generation never needs it)."""
        runner, st = self.runner, self._live()
        shapes = runner.output_shapes(self.batch, 0, self.past)
        out = {}
        for o in st.state_outputs:
            n = past_name(o)
            out[o] = np.empty(shapes[o], runner.input_metadata[n].dtype)
            runner.cuda.download(out[o], st.sets[self.current][n], st.buffers.stream)
        runner.cuda.sync(st.buffers.stream)
        return state_from_outputs(out)

    def release(self) -> None:
        """Hand the device state back to the runner for the next decoder (idempotent)."""
        if not self.released:
            self.released = True
            state, self._state = self._state, None
            self.runner.take_back(state)

    def close(self) -> None:
        """Free the device state now instead of handing it back (after a failure)."""
        if not self.released:
            self.released = True
            state, self._state = self._state, None
            state.close()
