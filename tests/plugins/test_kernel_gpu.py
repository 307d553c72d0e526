"""The nvcc-built Realign kernel on a real GPU against the float64 oracle (correctness only).

Runs the quick subset of tools/gpu_check_kernel.py: the C launcher through ctypes and
the launch_plan sequence out of the fatbin, float32 and float16, with and without
carries, |h| up to 6e4. Skips with the reason on machines without a GPU; timings are
tools/gpu_check.sh's job.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess

import pytest
from scripts import load_script


def gpu_absent_reason() -> str | None:
    """None when an NVIDIA GPU with a working driver is present, else why not."""
    try:
        from cuda.bindings import driver as cu
    except ImportError:
        cu = None
    if cu is not None:
        try:
            ok = cu.cuInit(0)[0] == cu.CUresult.CUDA_SUCCESS
        except RuntimeError:  # cuda-python >= 13 raises when libcuda.so (the driver) is absent
            ok = False
        err, count = cu.cuDeviceGetCount() if ok else (None, 0)
        return None if ok and err == cu.CUresult.CUDA_SUCCESS and count > 0 else \
            "no NVIDIA GPU/driver on this machine"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no NVIDIA GPU/driver on this machine"
    listed = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return None if listed.returncode == 0 and "GPU" in listed.stdout else \
        "no NVIDIA GPU/driver on this machine"


@pytest.fixture(scope="module")
def gpu_check():
    reason = gpu_absent_reason()
    if reason:
        pytest.skip(reason)
    for module, why in (("torch", "torch"), ("numpy", "numpy")):
        pytest.importorskip(module, reason=f"{why} is needed to drive the GPU check")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA support")
    if importlib.util.find_spec("cupy") is None and importlib.util.find_spec("cuda") is None:
        pytest.skip("neither cuda-python nor CuPy is installed to launch the fatbin by name")
    module = load_script("tools/gpu_check_kernel.py")
    build_kernels, _, _ = module.load_scredge()
    if build_kernels.find_nvcc() is None:
        pytest.skip("nvcc (CUDA toolkit) not installed on this machine")
    return module


@pytest.mark.gpu
@pytest.mark.slow
def test_kernel_matches_the_float64_oracle_on_the_gpu(gpu_check, tmp_path):
    """Oracle: SCR_SPEC section 2 in float64 (tools/gpu_check_kernel.oracle_f64, itself checked
    against tests/oracles.realign_spec_f64); SCR_SPEC section 5 op-tier tolerances."""
    assert gpu_check.check_oracles_agree() < 1e-9
    results = gpu_check.run_correctness(quick=True, workdir=tmp_path)
    failed = [r for r in results if not r.ok]
    assert results and not failed, "\n".join(map(str, failed))
    assert {"c-launcher", "plan+fatbin"} <= {r.path for r in results}
