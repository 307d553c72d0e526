"""A stand-in for the runner's CUDA layer (runtime/runners/cuda_ops.CudaOps) on machines
without a GPU: device memory as bytearrays behind fake pointers, every call recorded."""

from __future__ import annotations

import numpy as np


class FakeCuda:
    """Device memory as bytearrays keyed by fake pointers; every call recorded."""

    def __init__(self, calls: list) -> None:
        self.calls, self.mem, self._next = calls, {}, 0x1000

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
        self.mem[dst][:array.nbytes] = array.tobytes()
        self.calls.append(("upload", dst, array.nbytes))

    def download(self, array, src, stream):
        array.reshape(-1).view(np.uint8)[:] = np.frombuffer(self.mem[src][:array.nbytes],
                                                            np.uint8)
        self.calls.append(("download", src, array.nbytes))

    def zero(self, ptr, nbytes, stream):
        self.mem[ptr][:nbytes] = bytes(nbytes)
        self.calls.append(("zero", ptr, nbytes))

    def sync(self, stream):
        self.calls.append(("sync", stream))
