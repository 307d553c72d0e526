"""The few CUDA runtime calls the TensorRT runner makes, through cuda-python (never torch).

Kept to one small object so the runner's binding, shape and profile logic can be tested
against a fake that records calls, on machines without a GPU. Device pointers and stream
handles are plain ints, as TensorRT's Python API takes them.
"""

from __future__ import annotations

import numpy as np

from scredge.deps import require
from scredge.errors import ScredgeError


class CudaOps:
    """cudaMalloc / cudaMemcpyAsync / cudaMemsetAsync / streams / stream capture into CUDA
    graphs, on the current device."""

    def __init__(self) -> None:
        self._rt = require("cuda.bindings.runtime")

    def _check(self, result, what: str):
        err, *value = result if isinstance(result, tuple) else (result,)
        if err != self._rt.cudaError_t.cudaSuccess:
            raise ScredgeError(f"CUDA call failed: {what}", received=str(err),
                               expected="cudaSuccess",
                               fix="check the driver (nvidia-smi) and free GPU memory")
        return value[0] if value else None

    def stream(self) -> int:
        flags = self._rt.cudaStreamNonBlocking
        return int(self._check(self._rt.cudaStreamCreateWithFlags(flags), "cudaStreamCreate"))

    def destroy_stream(self, stream: int) -> None:
        self._check(self._rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({nbytes})"))

    def free(self, ptr: int) -> None:
        self._check(self._rt.cudaFree(ptr), "cudaFree")

    def upload(self, dst: int, array: np.ndarray, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._rt.cudaMemcpyAsync(dst, array.ctypes.data, array.nbytes, kind,
                                             stream), "cudaMemcpyAsync H2D")

    def download(self, array: np.ndarray, src: int, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._rt.cudaMemcpyAsync(array.ctypes.data, src, array.nbytes, kind,
                                             stream), "cudaMemcpyAsync D2H")

    def zero(self, ptr: int, nbytes: int, stream: int) -> None:
        self._check(self._rt.cudaMemsetAsync(ptr, 0, nbytes, stream), "cudaMemsetAsync")

    def sync(self, stream: int) -> None:
        self._check(self._rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    # -- CUDA graphs: capture one stream's work, replay it with one launch ---------------
    def begin_capture(self, stream: int) -> None:
        # thread-local: another thread's cudaMalloc (a second decoder of the same Engine)
        # is not refused while this thread captures, as it would be in global mode
        mode = self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self._rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream: int):
        """Leave capture mode (always, even after a failed capture) and instantiate the
        graph; returns the executable graph."""
        graph = self._check(self._rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        try:
            executable = self._check(self._rt.cudaGraphInstantiate(graph, 0),
                                     "cudaGraphInstantiate")
        except ScredgeError:
            self._rt.cudaGraphDestroy(graph)  # best effort: the instantiate error is the news
            raise
        try:  # the executable graph keeps what it needs: the captured one can go
            self._check(self._rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
        except ScredgeError:
            self.destroy_graph(executable)
            raise
        return executable

    def launch_graph(self, graph, stream: int) -> None:
        self._check(self._rt.cudaGraphLaunch(graph, stream), "cudaGraphLaunch")

    def destroy_graph(self, graph) -> None:
        self._check(self._rt.cudaGraphExecDestroy(graph), "cudaGraphExecDestroy")
