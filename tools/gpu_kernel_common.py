"""What both halves of the GPU kernel check need: the scredge modules of this checkout,
the inputs, the kernel build and the C launcher. Imported by `gpu_check_kernel.py`
(correctness, and the command line) and `gpu_kernel_timing.py` (speed), which sit beside it;
it imports neither."""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KAPPA = 8.0
DEVICE = "cuda"  # "cpu" lets the comparison code be dry-run against the host emulation


@functools.cache  # mapping the folders twice would give two copies of every module
def load_scredge():
    """(build_kernels, launch_plan, realign_reference) from this checkout, installed or not."""
    try:
        import scredge

        installed_here = Path(scredge.__file__).resolve().parent == REPO / "core"
    except ImportError:
        installed_here = False
    if not installed_here:  # map the source folders the way pyproject's package-dir does
        for name in [m for m in sys.modules if m == "scredge" or m.startswith("scredge.")]:
            del sys.modules[name]
        for name, folder in (("scredge", "core"), ("scredge.plugins", "plugins"),
                             ("scredge.ref", "scr_ref"), ("scredge.export", "export"),
                             ("scredge.runtime", "runtime")):
            path = REPO / folder
            spec = importlib.util.spec_from_file_location(
                name, path / "__init__.py", submodule_search_locations=[str(path)])
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    from scredge.plugins.realign import build_kernels, launch_plan
    from scredge.ref.realign_op import realign_reference

    return build_kernels, launch_plan, realign_reference


def make_inputs(B, T, D, dtype, carry, h_max, seed):
    """Inputs drawn like tests/oracles.random_inputs; h rescaled to max|h| = h_max if given."""
    import torch

    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    x = getattr(torch, dtype)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=DEVICE, dtype=torch.float32)

    h = randn(B, T, D)
    if h_max is not None:
        h = h / h.abs().max() * h_max
    m_prev = randn(B, T, D)
    num_in = randn(B, D) if carry else torch.zeros(B, D, device=DEVICE)
    den_in = (torch.rand(B, 1, generator=gen, device=DEVICE) * 1.5 + 0.5 if carry
              else torch.zeros(B, 1, device=DEVICE))
    w_r, w_g = randn(D) * 0.3, randn(D) * 0.3
    b_r, b_g = randn(1), randn(1)
    return [h.to(x), m_prev.to(x), num_in, den_in, w_r, b_r, w_g, b_g]


class CLauncher:
    """scr_realign_enqueue from the nvcc-built shared library, through ctypes."""

    def __init__(self, library: Path):
        self.lib = ctypes.CDLL(str(library))
        self.lib.scr_realign_workspace_bytes.restype = ctypes.c_size_t
        self.lib.scr_realign_workspace_bytes.argtypes = [ctypes.c_int] * 3
        self.lib.scr_realign_enqueue.restype = ctypes.c_int
        self.lib.scr_realign_enqueue.argtypes = (
            [ctypes.c_int] + [ctypes.c_void_p] * 11 + [ctypes.c_int] * 3
            + [ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p])

    def __call__(self, dtype, ins, outs, workspace, stream, kappa=KAPPA) -> None:
        B, T, D = ins[0].shape
        ptrs = [t.data_ptr() for t in (*ins, *outs)]
        status = self.lib.scr_realign_enqueue(0 if dtype == "float32" else 1, *ptrs, B, T, D,
                                              kappa, workspace, stream)
        if status != 0:
            raise RuntimeError(f"scr_realign_enqueue returned cudaError {status}")


def empty_outputs(ins):
    import torch

    h = ins[0]
    B, _, D = h.shape
    nan = float("nan")  # a kernel that skips an element leaves NaN, which the check catches
    return [torch.full_like(h, nan), torch.full((B, D), nan, device=DEVICE),
            torch.full((B, 1), nan, device=DEVICE)]


def build(workdir: Path, build_kernels):
    """Kernels for this GPU's arch only: the all-arch build is CI's job, and it is slow."""
    import torch

    arch = "{}{}".format(*torch.cuda.get_device_capability(0)) if DEVICE == "cuda" else None
    archs = [arch] if arch else None
    fatbin = build_kernels.build_fatbin(workdir / "realign_kernel.fatbin", archs)
    library = build_kernels.build_launcher_library(workdir / "libscr_realign_kernel.so", archs)
    return fatbin, library
