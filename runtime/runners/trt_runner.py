"""The TensorRT backend: a deserialized engine with a prefill and a decode profile.

`TrtDecoder` keeps the KV and SCR state in device memory for its whole life: two buffer
sets sized for the full cache, the call reading one and writing the other, then swapping
(SCR_SPEC section 3: a call's `present.*` are exactly the next call's `past.*`). Per token
only the ids and positions go up and the logits come down. Each decoder has its own
execution context and CUDA stream (contexts are not thread-safe); the profile is switched
with `set_optimization_profile_async` only when the phase changes.

Every call is checked against the engine's limits before any CUDA or TensorRT call, so a
request beyond the profiles is a ScredgeError, never a TensorRT failure. All CUDA calls go
through one `CudaOps`-like object (injected; tests use a fake). With `cuda_graph` the
steady decode step (P = W-1: fixed shapes, two address maps) is replayed from CUDA graphs
(trt_graphs).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Mapping

import numpy as np

from scredge.config import SCRConfig
from scredge.errors import ScredgeError
from scredge.runtime.cache import past_name, state_from_outputs
from scredge.runtime.runners.base import Decoder, Runner, TensorMeta
from scredge.runtime.runners.trt_graphs import CudaGraphMode, DecodeGraphs
from scredge.runtime.trt_profiles import DECODE, PREFILL, Limits

MAX_IDLE_DECODERS = 4  # kept per batch size for reuse; each holds a full cache on the GPU
_F32 = np.dtype(np.float32)
_I64 = np.dtype(np.int64)


def graph_io(config: SCRConfig, kv_dtype: np.dtype) -> tuple[dict[str, TensorMeta], list[str]]:
    """Input metadata (symbolic dims as exported) and output names, in graph order."""
    from scredge.export.graph import GraphIO  # torch-free: names from the config only

    io = GraphIO.for_config(config)
    meta = {}
    for name in io.inputs:
        if name in ("input_ids", "position_ids"):
            meta[name] = TensorMeta(_I64, ("batch", "sequence"))
        elif name.startswith("past_key_values."):
            meta[name] = TensorMeta(kv_dtype, ("batch", config.n_kv_heads, "past_sequence",
                                               config.head_dim))
        elif name.endswith(".num"):
            meta[name] = TensorMeta(_F32, ("batch", config.d_model))
        else:
            meta[name] = TensorMeta(_F32, ("batch", 1))
    return meta, list(io.outputs)


class TrtRunner(Runner):
    backend = "trt"
    device = "cuda"

    def __init__(self, engine, config: SCRConfig, kv_dtype, limits: Limits, cuda,
                 entry: dict | None = None, cuda_graph: CudaGraphMode = CudaGraphMode.OFF,
                 runtime_config=None) -> None:
        super().__init__(config, kv_dtype)
        self.engine = engine
        self.limits = limits
        self.cuda = cuda
        self.entry = entry or {}
        self.cuda_graph = cuda_graph
        self.runtime_config = runtime_config  # TensorRT for RTX: its own graph capture
        self._last_graphs: DecodeGraphs | None = None
        # released decoders by batch size: the next generation reuses one's execution
        # context, stream and device buffers instead of creating them again
        self._idle: dict[int, list[TrtDecoder]] = {}
        self._idle_lock = threading.Lock()
        self._inputs, self._outputs = graph_io(config, self.kv_dtype)

    def without_cuda_graph(self) -> TrtRunner:
        """The same engine, run uncaptured (the baseline of `bench --cuda-graph`)."""
        plain = copy.copy(self)
        plain.cuda_graph, plain.runtime_config, plain._last_graphs = CudaGraphMode.OFF, None, None
        plain._idle, plain._idle_lock = {}, threading.Lock()  # its decoders are uncaptured
        return plain

    def cuda_graph_status(self) -> str:
        """What the newest decoder did with CUDA graphs (captured, native, or off and why)."""
        if self._last_graphs is None:
            return f"{self.cuda_graph.value}: no decoder yet"
        return self._last_graphs.status()

    def new_context(self):
        if self.runtime_config is not None:
            return self.engine.create_execution_context(self.runtime_config)
        return self.engine.create_execution_context()

    def decoder(self, batch: int) -> TrtDecoder:
        """A decoder in the empty state: a released one of this batch size, reset, or new."""
        with self._idle_lock:
            idle = self._idle.get(batch)
            dec = idle.pop() if idle else None
        if dec is None:
            return TrtDecoder(self, batch)
        dec.reset()
        return dec

    def close(self) -> None:
        """Free the idle decoders' contexts, streams and device buffers now (decoders in use
        are freed when released or collected)."""
        with self._idle_lock:
            idle = [d for ds in self._idle.values() for d in ds]
            self._idle.clear()
        for dec in idle:
            dec.close()

    def _take_back(self, dec: TrtDecoder) -> None:
        with self._idle_lock:
            idle = self._idle.setdefault(dec.batch, [])
            if len(idle) < MAX_IDLE_DECODERS:
                idle.append(dec)
                return
        dec.close()

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One stateless call on host arrays (parity tools, polygraphy-style checks): state
        goes up and comes back down. Generation uses `decoder`, which keeps it on the GPU."""
        B, T = feed["input_ids"].shape
        P = feed["past_key_values.0.key"].shape[2]
        if P > 0 and T > 1:
            raise ScredgeError("a call with cached positions and several new tokens is "
                               "outside both optimisation profiles",
                               received=f"P = {P}, T = {T}",
                               expected="P = 0 (prefill) or T = 1 (decode)",
                               fix="use runner.decoder(batch).step, which splits such calls")
        self.limits.check(B, P, T)
        shapes = self._output_shapes(B, T, P)
        call = _Call(self, self.new_context())
        try:
            ptrs = {n: call.alloc(np.ascontiguousarray(a).nbytes) for n, a in feed.items()}
            out_dtypes = {n: (_F32 if n == "logits" or n.startswith("scr_") else self.kv_dtype)
                          for n in self._outputs}
            ptrs.update({n: call.alloc(int(np.prod(s)) * out_dtypes[n].itemsize)
                         for n, s in shapes.items()})
            for n, a in feed.items():
                self.cuda.upload(ptrs[n], np.ascontiguousarray(a), call.stream)
            call.run(PREFILL if P == 0 else DECODE,
                     {n: tuple(a.shape) for n, a in feed.items()}, ptrs)
            out = {n: np.empty(s, out_dtypes[n]) for n, s in shapes.items()}
            for n, a in out.items():
                self.cuda.download(a, ptrs[n], call.stream)
            self.cuda.sync(call.stream)
            return out
        finally:
            call.close()

    def _output_shapes(self, B: int, T: int, P: int) -> dict[str, tuple[int, ...]]:
        c = self.config
        p2 = c.present_len(P, T)
        shapes = {}
        for n in self._outputs:
            if n == "logits":
                shapes[n] = (B, T, c.vocab_size)
            elif n.startswith("present."):
                shapes[n] = (B, c.n_kv_heads, p2, c.head_dim)
            else:
                shapes[n] = (B, c.d_model) if n.endswith(".num") else (B, 1)
        return shapes


class _Call:
    """One execution context, its stream and the device buffers it allocated."""

    def __init__(self, runner: TrtRunner, context) -> None:
        if context is None:
            raise ScredgeError("TensorRT could not create an execution context",
                               received="create_execution_context() returned None",
                               fix="check free GPU memory; see the TensorRT messages above")
        self.runner, self.context, self.cuda = runner, context, runner.cuda
        self.stream = self.cuda.stream()
        self.profile: int | None = None
        self._shapes_set: Mapping[str, tuple] | None = None  # last shapes given to the context
        self._buffers: list[int] = []

    def alloc(self, nbytes: int) -> int:
        ptr = self.cuda.malloc(nbytes)
        self._buffers.append(ptr)
        return ptr

    def run(self, profile: int, input_shapes: Mapping[str, tuple], addresses: Mapping[str, int]
            ) -> None:
        ctx = self.context
        if profile != self.profile:
            if not ctx.set_optimization_profile_async(profile, self.stream):
                raise ScredgeError("TensorRT refused the optimisation profile",
                                   received=profile, expected="0 (prefill) or 1 (decode)",
                                   fix="rebuild the engine with `scredge build`")
            self.profile = profile
            self._shapes_set = None  # a profile switch needs the shapes set again
        if input_shapes is not self._shapes_set:  # same dict object: the context has them
            for name, shape in input_shapes.items():
                if not ctx.set_input_shape(name, shape):
                    raise ScredgeError(f"TensorRT refused the shape of input '{name}'",
                                       received=list(shape),
                                       expected=f"profile {profile}'s range")
            self._shapes_set = input_shapes
        for name, ptr in addresses.items():
            if not ctx.set_tensor_address(name, ptr):
                raise ScredgeError(f"TensorRT refused the address of tensor '{name}'",
                                   received=hex(ptr), expected="a tensor of this engine, "
                                   "256-byte aligned (cudaMalloc's alignment)",
                                   fix="rebuild the engine from this artifact with "
                                       "`scredge build`")
        if not ctx.execute_async_v3(self.stream):
            raise ScredgeError("TensorRT execution failed", received="execute_async_v3 False",
                               fix="see the TensorRT messages above")

    def close(self) -> None:
        for ptr in self._buffers:
            self.cuda.free(ptr)
        self._buffers.clear()
        if self.stream is not None:
            self.cuda.destroy_stream(self.stream)
            self.stream = None


class TrtDecoder(Decoder):
    """Decoding state in two device buffer sets that swap every call."""

    def __init__(self, runner: TrtRunner, batch: int) -> None:
        runner.limits.check(batch, 0, 1)  # batch within the profiles, before any CUDA call
        super().__init__(runner, batch)
        c, lim = runner.config, runner.limits
        self._call = _Call(runner, runner.new_context())
        self.graphs = runner._last_graphs = DecodeGraphs(self._call, runner.cuda_graph)
        B, rows = batch, lim.max_prefill
        self._ids = self._call.alloc(B * rows * 8)
        self._pos = self._call.alloc(B * rows * 8)
        self._logits = self._call.alloc(B * rows * c.vocab_size * 4)
        # each state tensor at its largest: the output shapes of a call that fills the cache
        self._state_outputs = runner.output_names[1:]
        full = runner._output_shapes(B, 0, lim.cache)
        nbytes = {past_name(o): int(np.prod(full[o])) * runner.input_metadata[past_name(o)]
                  .dtype.itemsize for o in self._state_outputs}
        self._state_inputs = list(nbytes)
        self.sets: list[dict[str, int]] = [
            {n: self._call.alloc(size) for n, size in nbytes.items()} for _ in range(2)]
        self._carry_bytes = {n: size for n, size in nbytes.items() if n.startswith("scr_past.")}
        self._zero_carry()
        # a call whose past is in set k writes its present into set 1-k: only two address
        # maps ever occur, so they are built once, not per token
        self._addresses = [
            {"input_ids": self._ids, "position_ids": self._pos, "logits": self._logits,
             **self.sets[k], **{o: self.sets[1 - k][past_name(o)] for o in self._state_outputs}}
            for k in (0, 1)]
        self._shapes_key: tuple[int, int] | None = None  # (T, P) of the last call's shapes
        self._shapes: dict[str, tuple] = {}
        self.current = 0  # index of the set holding this call's past

    def _zero_carry(self) -> None:
        """The empty SCR carry (num = 0, den = 0; SCR_SPEC section 2) in the set the first
        call reads; the KV past needs nothing, as that call has P = 0."""
        for n, size in self._carry_bytes.items():
            self.runner.cuda.zero(self.sets[0][n], size, self._call.stream)

    def reset(self) -> None:
        """Back to the empty state (P = 0), keeping context, stream and buffers."""
        self.graphs.drop()  # captured for the last generation's run-up; captured again
        self.past, self.current, self._shapes_key = 0, 0, None
        self._zero_carry()
        self.released = False
        self.runner._last_graphs = self.graphs

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.runner._take_back(self)

    def step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        if self.released:
            raise ScredgeError("step() on a released decoder",
                               fix="take a new one with runner.decoder(batch)")
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
        runner, call, c = self.runner, self._call, self.runner.config
        B, T = ids.shape
        P = self.past
        runner.cuda.upload(self._ids, ids, call.stream)
        runner.cuda.upload(self._pos, positions, call.stream)
        if self._shapes_key != (T, P):  # steady decode (T = 1, P = W-1) reuses the last ones
            self._shapes = {"input_ids": (B, T), "position_ids": (B, T)}
            for n in self._state_inputs:
                self._shapes[n] = tuple(P if d == "past_sequence" else B if d == "batch" else d
                                        for d in runner.input_metadata[n].shape)
            self._shapes_key = (T, P)
        logits = np.empty((B, T, c.vocab_size), np.float32)
        t0 = time.perf_counter()
        if T == 1 and P > 0 and c.present_len(P, 1) == P and self.graphs.active:
            # steady decode: the cache is full, so shapes repeat and addresses alternate
            self.graphs.run(self.current, self._shapes, self._addresses[self.current])
        else:
            self.graphs.drop()
            call.run(PREFILL if P == 0 else DECODE, self._shapes, self._addresses[self.current])
        runner.cuda.download(logits, self._logits, call.stream)
        runner.cuda.sync(call.stream)
        self.last_run_s = time.perf_counter() - t0
        self.current = 1 - self.current
        self.past = c.present_len(P, T)
        return logits

    def state(self) -> dict[str, np.ndarray]:
        """The current state copied to the host (for checks; generation never needs it)."""
        runner = self.runner
        shapes = runner._output_shapes(self.batch, 0, self.past)
        out = {}
        for o in self._state_outputs:
            n = past_name(o)
            dtype = runner.input_metadata[n].dtype
            out[o] = np.empty(shapes[o], dtype)
            runner.cuda.download(out[o], self.sets[self.current][n], self._call.stream)
        runner.cuda.sync(self._call.stream)
        return state_from_outputs(out)

    def close(self) -> None:
        self.graphs.close()
        self._call.close()

    def __del__(self) -> None:
        call = getattr(self, "_call", None)
        if call is not None and call.stream is not None:
            try:
                self.close()
            except Exception:  # noqa: BLE001 - a finalizer: at interpreter exit the CUDA
                pass  # runtime may be unloaded already, and the driver frees it all anyway
