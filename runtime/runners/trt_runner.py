"""The TensorRT backend: a deserialized engine with a prefill and a decode profile.

Generation runs on `trt_decoder.TrtDecoder`s, which keep the KV and SCR state in device
memory; each has its own execution context and CUDA stream (contexts are not
thread-safe), and the profile is switched only when the phase changes. The runner keeps
the device state of released decoders and hands it to the next one (at most
MAX_IDLE_DECODERS, the least recently used freed first). `infer` is the stateless path
for checks: state goes up and comes back down.

Every call is checked against the engine's limits before any CUDA or TensorRT call, so a
request beyond the profiles is a ScredgeError, never a TensorRT failure. All CUDA calls go
through one `CudaOps`-like object (injected; tests use a fake). With `cuda_graph` the
steady decode step (P = W-1: fixed shapes, two address maps) is replayed from CUDA graphs
(trt_graphs).
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Mapping

import numpy as np

from scredge import contract
from scredge.config import SCRConfig
from scredge.errors import ScredgeError
from scredge.runtime.runners.base import Runner, TensorMeta
from scredge.runtime.runners.trt_context import Context, DeviceBuffers
from scredge.runtime.runners.trt_decoder import DecoderState, TrtDecoder
from scredge.runtime.runners.trt_graphs import CudaGraphMode
from scredge.runtime.trt_profiles import DECODE, PREFILL, Limits

MAX_IDLE_DECODERS = 4  # device states kept for reuse; each holds two full caches on the GPU


def graph_io(config: SCRConfig, kv_dtype: np.dtype) -> tuple[dict[str, TensorMeta], list[str]]:
    """Input metadata (symbolic dims as exported) and output names, in graph order."""
    io = contract.GraphIO.for_config(config)
    meta = {name: TensorMeta(contract.tensor_dtype(name, kv_dtype),
                             (contract.BATCH, contract.SEQUENCE) if name in contract.TOKEN_INPUTS
                             else (contract.BATCH, contract.MASK_LENGTH)
                             if name == contract.ATTENTION_MASK
                             else contract.state_shape(config, name))
            for name in io.inputs}
    return meta, list(io.outputs)


class TrtRunner(Runner):
    backend = "trt"
    device = "cuda"

    def __init__(self, engine, config: SCRConfig, kv_dtype, limits: Limits, cuda,
                 entry: dict | None = None, cuda_graph: CudaGraphMode = CudaGraphMode.OFF,
                 runtime_config=None, trt_runtime=None) -> None:
        super().__init__(config, kv_dtype)
        self.engine = engine
        self.limits = limits
        self.cuda = cuda
        self.entry = entry or {}
        self.cuda_graph = cuda_graph
        self.runtime_config = runtime_config  # TensorRT for RTX: its own graph capture
        self._trt_runtime = trt_runtime  # held: the engine must not outlive its runtime
        self._last_graphs = None  # weakref to the newest decoder's DecodeGraphs
        self._idle: list[DecoderState] = []  # released decoders' device state, oldest first
        self._idle_lock = threading.Lock()
        self._inputs, self._outputs = graph_io(config, self.kv_dtype)

    def without_cuda_graph(self) -> TrtRunner:
        """The same engine, run uncaptured (the baseline of `bench --cuda-graph`)."""
        plain = copy.copy(self)
        plain.cuda_graph, plain.runtime_config, plain._last_graphs = CudaGraphMode.OFF, None, None
        plain._idle, plain._idle_lock = [], threading.Lock()  # its states are uncaptured
        return plain

    def track_graphs(self, graphs) -> None:
        """The newest decoder's graphs, which `cuda_graph_status` reports on (weakly held:
        a dropped decoder frees them at once)."""
        self._last_graphs = weakref.ref(graphs)

    def cuda_graph_status(self) -> str:
        """What the newest decoder did with CUDA graphs (captured, native, or off and why)."""
        graphs = self._last_graphs() if self._last_graphs is not None else None
        if graphs is None:
            return f"{self.cuda_graph.value}: no live decoder"
        return graphs.status()

    def decoder(self, batch: int) -> TrtDecoder:
        """A decoder in the empty state, on a released decoder's device state when one of
        this batch size is idle (its context, stream and buffers), else on a new one."""
        self.limits.check(batch, 0, 1)  # before taking anything from the pool
        return TrtDecoder(self, batch, self._idle_state(batch))

    def limits_check(self, batch: int, past: int) -> None:
        self.limits.check(batch, past, 1)

    def _idle_state(self, batch: int) -> DecoderState | None:
        with self._idle_lock:
            state = next((s for s in reversed(self._idle) if s.batch == batch), None)
            if state is not None:
                self._idle.remove(state)
        return state

    def state_for(self, batch: int) -> DecoderState:
        """A device state of `batch` rows for a decoder whose batch changes (join, leave)."""
        state = self._idle_state(batch)
        if state is None:
            state = DecoderState(self, batch)
        state.begin()
        return state

    def take_back(self, state: DecoderState) -> None:
        """Keep a released decoder's device state for the next decoder of its batch size."""
        if state.closed:
            return
        with self._idle_lock:
            self._idle.append(state)
            evicted = self._idle[:-MAX_IDLE_DECODERS]
            del self._idle[:-MAX_IDLE_DECODERS]
        for old in evicted:
            old.close()

    def close(self) -> None:
        """Free the idle decoders' contexts, streams and device buffers now (decoders in use
        are freed when released after this, or collected)."""
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for state in idle:
            state.close()

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One stateless call on host arrays (parity tools, polygraphy-style checks): state
        goes up and comes back down. Generation uses `decoder`, which keeps it on the GPU."""
        B, T = feed[contract.INPUT_IDS].shape
        P = feed[contract.past_kv(0, "key")].shape[2]
        if P > 0 and T > 1:
            raise ScredgeError("a call with cached positions and several new tokens is "
                               "outside both optimisation profiles",
                               received=f"P = {P}, T = {T}",
                               expected="P = 0 (prefill) or T = 1 (decode)",
                               fix="use runner.decoder(batch).step, which splits such calls")
        self.limits.check(B, P, T)
        shapes = self.output_shapes(B, T, P)
        bufs = DeviceBuffers(self.cuda)
        try:
            ctx = Context.create(self.engine, self.runtime_config, bufs.stream)
            ptrs = {n: bufs.alloc(np.ascontiguousarray(a).nbytes) for n, a in feed.items()}
            out_dtypes = {n: contract.tensor_dtype(n, self.kv_dtype) for n in self._outputs}
            ptrs.update({n: bufs.alloc(int(np.prod(s)) * out_dtypes[n].itemsize)
                         for n, s in shapes.items()})
            for n, a in feed.items():
                self.cuda.upload(ptrs[n], np.ascontiguousarray(a), bufs.stream)
            ctx.run(PREFILL if P == 0 else DECODE,
                    {n: tuple(a.shape) for n, a in feed.items()}, ptrs)
            out = {n: np.empty(s, out_dtypes[n]) for n, s in shapes.items()}
            for n, a in out.items():
                self.cuda.download(a, ptrs[n], bufs.stream)
            self.cuda.sync(bufs.stream)
            return out
        finally:
            bufs.close()

    def output_shapes(self, B: int, T: int, P: int) -> dict[str, tuple[int, ...]]:
        """Every output's shape for a call of T new tokens on P cached ones."""
        c = self.config
        p2 = c.present_len(P, T)
        return {n: (B, T, c.vocab_size) if n == contract.LOGITS
                else contract.state_shape(c, n, B, p2) for n in self._outputs}
