"""CUDA graphs for the TensorRT decoder's steady decode step (`--cuda-graph`).

Once a windowed model's cache is full (P = W-1) every decode call has the same shapes,
and the decoder's two state sets give only two address maps (trt_runner). Each map's call
is captured once with stream capture and then replayed with one `cudaGraphLaunch`: the
per-layer kernel launches, and the Python `Realign` plugin's `enqueue`, leave the token
loop. TensorRT's rules for capture (developer guide, "Working with CUDA Graphs"): call
`execute_async_v3` once after a shape change before capturing, capture on a non-default
stream, and bind nothing else while the graph is in use. So each set runs uncaptured once
at the steady shape, set 1's steady calls get an execution context of their own (each
context keeps the bindings its graph was captured with, as TensorRT-LLM's two-context
ping-pong does; it costs one more context's activation memory), and a new generation
drops the graphs and captures again.

TensorRT for RTX refuses plain stream capture of engines that own their memory, and has
its own capture instead (`IRuntimeConfig.cuda_graph_strategy = WHOLE_GRAPH_CAPTURE`, which
also handles changing shapes): the loader picks `CudaGraphMode.NATIVE` for it and this
module then stays out of the way.

A capture TensorRT refuses (`is_stream_capturable` false, `execute_async_v3` false under
capture, an invalidated capture) is not an error: the decoder warns once, says why in
`status`, and runs uncaptured.
"""

from __future__ import annotations

import enum
import warnings

from scredge.errors import ScredgeError
from scredge.runtime.trt_profiles import DECODE


class CudaGraphMode(enum.Enum):
    OFF = "off"
    CAPTURE = "capture"  # stream capture of the steady decode step, by this module
    NATIVE = "native"  # TensorRT for RTX's own capture, set on the execution context


class DecodeGraphs:
    """Up to two captured decode steps of one decoder state, on its stream: set k's on
    `contexts[k]` (the state's list; context 1 is added by `new_context` when needed)."""

    def __init__(self, contexts: list, new_context, stream: int, cuda,
                 mode: CudaGraphMode) -> None:
        self.contexts, self.new_context = contexts, new_context
        self.stream, self.cuda, self.mode = stream, cuda, mode
        self.graphs: list[object | None] = [None, None]
        self.warm = [False, False]  # set k ran once uncaptured at the current steady shape
        self.launches = 0
        self.captures = 0
        self.off: str | None = {
            CudaGraphMode.OFF: "not requested (--cuda-graph)",
            CudaGraphMode.NATIVE: "TensorRT for RTX captures the engine itself"}.get(mode)

    @property
    def active(self) -> bool:
        return self.off is None

    def status(self) -> str:
        if self.mode is CudaGraphMode.NATIVE:
            return "native: TensorRT for RTX whole-graph capture"
        if self.off is not None:
            return f"off: {self.off}"
        if self.captures == 0:
            return ("on, none captured yet: the cache has not reached a fixed shape (a "
                    "windowed model's cache fills at W-1; window = null grows every token)")
        return f"on: {self.captures} graph(s) captured, {self.launches} launches"

    def run(self, k: int, shapes, addresses) -> None:
        """The steady decode call for state set k: replayed, captured, or run plainly."""
        if self.graphs[k] is None:
            ctx = self.context_for_set(k)
            if not self.warm[k]:
                ctx.run(DECODE, shapes, addresses)
                self.warm[k] = True
                return
            self.graphs[k] = self._capture(ctx, shapes, addresses)
            if self.graphs[k] is None:  # refused: self.off says why
                ctx.run(DECODE, shapes, addresses)
                return
        # a capture records the work without running it: every path launches
        self.cuda.launch_graph(self.graphs[k], self.stream)
        self.launches += 1

    def context_for_set(self, k: int):
        """Context 0 runs every call except the steady ones whose past is in set 1: those
        get a context of their own, so each context keeps the bindings its graph was
        captured with (TensorRT-LLM ping-pongs two contexts the same way)."""
        while len(self.contexts) <= k:
            self.contexts.append(self.new_context())
        return self.contexts[k]

    def _capture(self, ctx, shapes, addresses):
        stream = self.stream
        capturable = getattr(ctx.trt, "is_stream_capturable", None)  # TensorRT for RTX
        if capturable is not None and not capturable(stream):
            return self._refuse("TensorRT reports the execution context not stream-capturable")
        try:
            self.cuda.begin_capture(stream)
        except ScredgeError as exc:
            return self._refuse(f"cudaStreamBeginCapture failed ({exc.received})")
        failure, graph, escaping = None, None, True
        try:
            try:
                ctx.run(DECODE, shapes, addresses)
            except ScredgeError as exc:
                failure = f"{exc.what} under stream capture"
            escaping = False
        finally:  # always leave capture mode, or the stream stays unusable
            try:
                graph = self.cuda.end_capture(stream)
            except ScredgeError as exc:
                failure = failure or f"ending the capture failed: {exc.what} ({exc.received})"
            if graph is not None and (failure is not None or escaping):
                self.cuda.destroy_graph(graph)  # refused, or an exception is on its way out
                graph = None
        if failure is not None:
            return self._refuse(failure)
        self.captures += 1
        return graph

    def _refuse(self, why: str) -> None:
        self.off = why
        warnings.warn(f"CUDA graph capture of the decode step is off: {why}; decoding "
                      "continues uncaptured", RuntimeWarning, stacklevel=4)
        return None

    def drop(self) -> None:
        """Forget the graphs (the shape changed: a new prefill); they are captured again
        when the cache is full again."""
        for k, graph in enumerate(self.graphs):
            if graph is not None:
                self.cuda.destroy_graph(graph)
            self.graphs[k] = None
        self.warm = [False, False]

    close = drop
