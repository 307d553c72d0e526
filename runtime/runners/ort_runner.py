"""The ONNX Runtime backend: CPU by default, CUDA when onnxruntime-gpu and a GPU are there.

`OrtDecoder` keeps the KV and SCR state as OrtValues in the session's device memory and
binds them straight back as the next call's inputs (IOBinding): no host copy of the cache
per token. Once the cache is full (P = W-1) every shape is constant, and it alternates
between two preallocated sets of state buffers: no allocation per token either.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from scredge.config import SCRConfig
from scredge.contract import (
    ATTENTION_MASK,
    CACHE_CONCAT,
    CACHE_SHARED,
    INPUT_IDS,
    LOGITS,
    POSITION_IDS,
    SEQLENS_K,
    past_name,
)
from scredge.runtime.cache import HostState, empty_state, feed_mask
from scredge.runtime.runners.base import Decoder, Runner, TensorMeta

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32}


class OrtRunner(Runner):
    backend = "ort"

    def __init__(self, session, config: SCRConfig, kv_dtype, realign=None,
                 graph: str | None = None) -> None:
        super().__init__(config, kv_dtype)
        self.session = session
        # the artifact's graph file the session runs (loaders.ort_graph: on CUDA a folder
        # whose onnxruntime graph has the shared cache runs its concat TensorRT graph)
        self.graph = graph
        # what runs the Realign nodes (runtime.realign_kernel.RealignKernel; None: not said)
        self.realign = realign
        self.providers = list(session.get_providers())
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self._inputs = {i.name: TensorMeta(np.dtype(_ORT_TYPES[i.type]), tuple(i.shape))
                        for i in session.get_inputs()}
        self._outputs = [o.name for o in session.get_outputs()]
        # which KV-cache form the graph has (SCR_SPEC v3 section 3): seen from its inputs
        self.cache = CACHE_SHARED if SEQLENS_K in self._inputs else CACHE_CONCAT

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self.session.run(None, dict(feed))))

    def decoder(self, batch: int) -> Decoder:
        if self.cache == CACHE_SHARED:
            from scredge.runtime.shared_cache import SharedDecoder

            return SharedDecoder(self, batch)
        return OrtDecoder(self, batch)


class OrtDecoder(Decoder):
    """Decoding state kept where the session computes.

    Growing phase (P < W-1: the cache length changes every call). On CUDA the state stays
    in device OrtValues bound back as inputs through IOBinding, so the cache never crosses
    to the host. On the CPU the host *is* the device, and a plain `run` on NumPy state is
    the cheapest call (binding 2L+2S values one by one costs more than it saves).

    Steady phase (P = W-1, decode): every shape is fixed. Two state buffer sets S0, S1 and
    two IOBindings prepared once (S0 -> S1, S1 -> S0), with the token, position and mask
    arrays bound by reference: a step writes two integers and runs, with no allocation (the
    mask [B,W] shifts by one column only while a joined row's pads are still in the cache).
    """

    def __init__(self, runner: OrtRunner, batch: int) -> None:
        super().__init__(runner, batch)
        import onnxruntime as ort

        self._ort = ort
        self._session = runner.session
        self._device = runner.device
        self._state_outputs = runner.output_names[1:]  # present.*, scr_present.*
        self._past_names = [past_name(o) for o in self._state_outputs]
        c = runner.config
        self._full = c.max_cache
        zeros = empty_state(c, batch, runner.kv_dtype)  # P = 0
        self._state: dict = zeros if self._device == "cpu" else {
            k: ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0) for k, v in zeros.items()}
        self._binding = self._session.io_binding() if self._device != "cpu" else None
        self._steady: list | None = None  # the two prepared bindings, once P = W-1
        self._steady_was_used = False
        self._set = 0  # which of the two steady state sets holds the current state
        self._lent = False  # the host state arrays are also held elsewhere (snapshot, load)

    def step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        B, T = ids.shape
        new_past = self.runner.config.present_len(self.past, T)
        if T == 1 and self._full is not None and self.past == new_past == self._full:
            return self._steady_step(ids, positions)
        self._steady = None  # shapes change: the prepared bindings no longer apply
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        mask = self._next_mask(T)
        if self._device == "cpu":
            logits = self._host_step(ids, positions, mask)
        else:
            logits = self._bound_step(ids, positions, mask)
        self.past = new_past
        return logits

    def _host_step(self, ids, positions, mask) -> np.ndarray:
        state = self._state
        if self._steady_was_used:  # leaving the steady phase: OrtValues back to arrays
            state = {k: v.numpy() for k, v in state.items()}
            self._steady_was_used = False
        t0 = time.perf_counter()
        out = self._session.run(None, {INPUT_IDS: ids, POSITION_IDS: positions,
                                       ATTENTION_MASK: mask, **state})
        self.last_run_s = time.perf_counter() - t0
        self._state = dict(zip(self._past_names, out[1:]))
        self._lent = False
        return out[0]

    def _bound_step(self, ids, positions, mask) -> np.ndarray:
        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        b.bind_cpu_input(INPUT_IDS, ids)
        b.bind_cpu_input(POSITION_IDS, positions)
        b.bind_cpu_input(ATTENTION_MASK, mask)
        for name, value in self._state.items():
            b.bind_ortvalue_input(name, value)
        b.bind_output(LOGITS, "cpu")
        for o in self._state_outputs:
            b.bind_output(o, self._device)
        t0 = time.perf_counter()
        self._session.run_with_iobinding(b)
        self.last_run_s = time.perf_counter() - t0
        values = b.get_outputs()
        self._state = dict(zip(self._past_names, values[1:]))
        return values[0].numpy()

    def _prepare_steady(self) -> None:
        ort, c = self._ort, self.runner.config
        self._ids = np.zeros((self.batch, 1), np.int64)
        self._pos = np.zeros((self.batch, 1), np.int64)
        self._logits = np.empty((self.batch, 1, c.vocab_size), np.float32)
        self._mask_buf = feed_mask(self.mask, 1)  # [B,W]: the cache's mask, then the token
        self._mask_ones = bool(self._mask_buf.all())
        ids_v, pos_v, logits_v, mask_v = (ort.OrtValue.ortvalue_from_numpy(a) for a in (
            self._ids, self._pos, self._logits, self._mask_buf))
        current = {k: ort.OrtValue.ortvalue_from_numpy(np.array(v) if self._lent else v)
                   if isinstance(v, np.ndarray) else v
                   for k, v in self._state.items()}  # CPU: wraps, no copy unless lent
        spare = {k: ort.OrtValue.ortvalue_from_shape_and_type(
            v.shape(), _ORT_TYPES[v.data_type()], self._device, 0) for k, v in current.items()}
        self._sets = [current, spare]
        self._steady = []
        self._steady_was_used = True
        for src, dst in ((0, 1), (1, 0)):
            b = self._session.io_binding()
            b.bind_ortvalue_input(INPUT_IDS, ids_v)
            b.bind_ortvalue_input(POSITION_IDS, pos_v)
            b.bind_ortvalue_input(ATTENTION_MASK, mask_v)
            for name, value in self._sets[src].items():
                b.bind_ortvalue_input(name, value)
            b.bind_ortvalue_output(LOGITS, logits_v)
            for o, name in zip(self._state_outputs, self._past_names):
                b.bind_ortvalue_output(o, self._sets[dst][name])
            self._steady.append(b)
        self._set = 0

    def _steady_step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Returns a buffer that the next step overwrites: read it before stepping again."""
        if self._steady is None:
            self._prepare_steady()
        self._ids[:] = ids
        self._pos[:] = positions
        t0 = time.perf_counter()
        self._session.run_with_iobinding(self._steady[self._set])
        self.last_run_s = time.perf_counter() - t0
        self._set ^= 1
        self._state = self._sets[self._set]
        buf = self._mask_buf
        if not self._mask_ones:  # the oldest slot leaves the cache: shift the mask by one
            buf[:, :-1] = buf[:, 1:].copy()
            buf[:, -1] = 1
            self._mask_ones = bool(buf.all())
        self._mask = None if self._mask_ones else buf[:, :-1]  # a view; host_state copies
        return self._logits

    def snapshot(self) -> HostState:
        """On the CPU outside the steady phase the state is the arrays the last `run`
        returned, which no later call writes: kept by reference. Otherwise a copy."""
        if self._device == "cpu" and not self._steady_was_used:
            self._check_live()
            self._lent = True  # the steady phase must not write into these arrays
            return HostState(dict(self._state), self.mask.copy())
        return self.host_state()

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() if isinstance(v, self._ort.OrtValue) else np.array(v)
                for k, v in self._state.items()}

    def _load_arrays(self, arrays: dict[str, np.ndarray], batch: int) -> None:
        self._steady, self._steady_was_used = None, False  # other shapes, other buffers
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        self._lent = True
        self._state = arrays if self._device == "cpu" else {
            k: self._ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0) for k, v in arrays.items()}

