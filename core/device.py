"""A real probe for NVIDIA GPUs, without torch or cuda-python: the driver API through ctypes.

Import success of a GPU package proves nothing (onnxruntime-gpu lists its CUDA provider on
machines without a GPU), so every GPU path and GPU test is gated on this probe.
"""

from __future__ import annotations

import ctypes
import functools


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports; 0 when there is no driver or no GPU."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def gpu_unavailable_reason() -> str | None:
    """None when a GPU can run CUDA here, else why not (for skips and error messages)."""
    if cuda_device_count() > 0:
        return None
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1) on this machine"
    return "the NVIDIA driver reports no usable GPU"
