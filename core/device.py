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


@functools.lru_cache(maxsize=8)
def compute_capability(device: int = 0) -> tuple[int, int] | None:
    """(major, minor) of CUDA device `device`, or None without a usable GPU.

    TensorRT engines are tied to it (and to the TensorRT version), so the engine builder
    names its files after it and the loader compares it before deserializing."""
    if cuda_device_count() <= device:
        return None
    lib = ctypes.CDLL("libcuda.so.1")
    handle, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    if lib.cuDeviceGet(ctypes.byref(handle), device) != 0:
        return None
    for attr, out in ((75, major), (76, minor)):  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_*
        if lib.cuDeviceGetAttribute(ctypes.byref(out), attr, handle) != 0:
            return None
    return major.value, minor.value
