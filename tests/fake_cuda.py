"""A stand-in for the runner's CUDA layer (runtime/runners/cuda_ops.CudaOps) on machines
without a GPU: device memory as bytearrays behind fake pointers, every call recorded.

Stream capture follows CUDA's rules where they matter to the runner: between
`begin_capture` and `end_capture` a fake engine's work on that stream is recorded (through
`record`), not run, and replayed by `launch_graph` with the shapes and addresses it had when
captured; a host copy or a sync on a capturing stream is an error, as on a GPU (it would
bake a host pointer into the graph, or break the capture)."""

from __future__ import annotations

import numpy as np


class FakeCuda:
    """Device memory as bytearrays keyed by fake pointers; every call recorded."""

    def __init__(self, calls: list) -> None:
        self.calls, self.mem, self._next = calls, {}, 0x1000
        self.capturing: dict[int, list] = {}  # stream -> work recorded since begin_capture

    def _not_capturing(self, stream, what):
        if stream in self.capturing:
            raise RuntimeError(f"{what} on a capturing stream (cudaErrorStreamCaptureUnsupported)")

    def stream(self):
        self.calls.append(("stream",))
        return 7

    def destroy_stream(self, stream):
        self.calls.append(("destroy_stream", stream))

    def malloc(self, nbytes):
        ptr, self._next = self._next, self._next + 0x1000 + nbytes
        self.mem[ptr] = bytearray(nbytes)
        self.calls.append(("malloc", nbytes))
        return ptr

    def free(self, ptr):
        del self.mem[ptr]

    def upload(self, dst, array, stream):
        self._not_capturing(stream, "host-to-device copy")
        self.mem[dst][:array.nbytes] = array.tobytes()
        self.calls.append(("upload", dst, array.nbytes))

    def download(self, array, src, stream):
        self._not_capturing(stream, "device-to-host copy")
        array.reshape(-1).view(np.uint8)[:] = np.frombuffer(self.mem[src][:array.nbytes],
                                                            np.uint8)
        self.calls.append(("download", src, array.nbytes))

    def zero(self, ptr, nbytes, stream):
        self._not_capturing(stream, "memset")
        self.mem[ptr][:nbytes] = bytes(nbytes)
        self.calls.append(("zero", ptr, nbytes))

    def sync(self, stream):
        self._not_capturing(stream, "cudaStreamSynchronize")
        self.calls.append(("sync", stream))

    # -- stream capture ---------------------------------------------------------------
    def begin_capture(self, stream):
        assert stream not in self.capturing, "capture already begun on this stream"
        self.capturing[stream] = []
        self.calls.append(("begin_capture", stream))

    def is_capturing(self, stream) -> bool:  # fake engines ask this; CudaOps has no such call
        return stream in self.capturing

    def record(self, stream, work) -> None:
        self.capturing[stream].append(work)

    def end_capture(self, stream):
        graph = FakeGraph(self.capturing.pop(stream))
        self.calls.append(("end_capture", stream, len(graph.nodes)))
        return graph

    def launch_graph(self, graph, stream):
        assert not graph.destroyed, "launch of a destroyed graph"
        self.calls.append(("launch_graph", id(graph)))
        for work in graph.nodes:
            work()

    def destroy_graph(self, graph):
        assert not graph.destroyed, "graph destroyed twice"
        graph.destroyed = True
        self.calls.append(("destroy_graph", id(graph)))


class FakeGraph:
    def __init__(self, nodes: list) -> None:
        self.nodes, self.destroyed = nodes, False
