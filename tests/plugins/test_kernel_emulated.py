"""The real Realign CUDA source, run on a CPU, against the float64 spec oracle.

realign_kernel.cu is compiled with g++ against the stand-in CUDA headers in
host_cuda/ (each CUDA thread a fiber, barriers and warp shuffles emulated), then
driven two ways: through the C launcher `scr_realign_enqueue`, and launch by launch
from `launch_plan.plan` as the Python plugin does with cuLaunchKernel. This checks
the kernels' indexing, block scans, carries and workspace layout where no GPU is;
tools/gpu_check_kernel.py checks the nvcc build on a real GPU.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from oracles import random_inputs, realign_spec_f64
from scredge.plugins.realign import launch_plan

HOST_CUDA = Path(__file__).parent / "host_cuda"
KERNEL_DIR = launch_plan.HEADER.parent
ARG_TYPES = {"ptr": ctypes.c_void_p, "i32": ctypes.c_int32, "f32": ctypes.c_float}
TOL = {"float32": 1e-5, "float16": 2e-3}  # SCR_SPEC section 5, op tier, x scale
NP_DTYPE = {"float32": np.float32, "float16": np.float16}
PAD = 64  # canary elements on each side of every output


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++ on this machine to build the host emulation of the kernels")
    out = tmp_path_factory.mktemp("emu") / "librealign_emu.so"
    done = subprocess.run([cxx, "-std=c++17", "-O2", "-shared", "-fPIC", "-Wno-unknown-pragmas",
                           "-I", str(HOST_CUDA), "-I", str(KERNEL_DIR),
                           str(HOST_CUDA / "emulator.cpp"), "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"building the host emulation failed:\n{done.stderr}"
    lib = ctypes.CDLL(str(out))
    lib.scr_realign_workspace_bytes.restype = ctypes.c_size_t
    lib.scr_realign_workspace_bytes.argtypes = [ctypes.c_int] * 3
    lib.scr_realign_enqueue.restype = ctypes.c_int
    lib.emu_launch.restype = ctypes.c_int
    return lib


def padded(shape, dtype, fill=np.nan):
    """An array with PAD canary elements before and after; returns (whole buffer, view)."""
    n = int(np.prod(shape))
    buf = np.full(n + 2 * PAD, fill, dtype)
    return buf, buf[PAD:PAD + n].reshape(shape)


def run_realign(emu, via, dtype, h, m_prev, num_in, den_in, w_r, b_r, w_g, b_g, kappa=8.0):
    """Run the op in the emulator; returns (m, num_out, den_out) and checks the canaries."""
    B, T, D = h.shape
    buffers = {
        "m": padded((B, T, D), NP_DTYPE[dtype]), "num_out": padded((B, D), np.float32),
        "den_out": padded((B, 1), np.float32),
    }
    tensors = {"h": h, "m_prev": m_prev, "num_in": num_in, "den_in": den_in, "w_r": w_r,
               "b_r": b_r, "w_g": w_g, "b_g": b_g}
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    ptrs = {k: v.ctypes.data for k, v in tensors.items()}
    ptrs.update({k: view.ctypes.data for k, (_, view) in buffers.items()})
    nbytes = emu.scr_realign_workspace_bytes(B, T, D)
    assert nbytes == launch_plan.workspace_bytes(B, T, D)
    ws_buf, workspace = padded((nbytes // 4,), np.float32)
    if via == "enqueue":
        names = launch_plan.PTR_KEYS
        rc = emu.scr_realign_enqueue(
            ctypes.c_int(0 if dtype == "float32" else 1),
            *[ctypes.c_void_p(ptrs[name]) for name in names], ctypes.c_int(B), ctypes.c_int(T),
            ctypes.c_int(D), ctypes.c_float(kappa), ctypes.c_void_p(workspace.ctypes.data),
            ctypes.c_void_p(0))
        assert rc == 0
    else:
        for launch in launch_plan.plan(dtype, ptrs, B, T, D, kappa, workspace.ctypes.data):
            values = [ARG_TYPES[kind](value) for kind, value in launch.args]
            args = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
            assert emu.emu_launch(launch.name.encode(), *launch.grid, *launch.block, args) == 0
    for buf, _ in [*buffers.values(), (ws_buf, None)]:
        canaries = np.concatenate([buf[:PAD], buf[-PAD:]])
        assert np.isnan(canaries.astype(np.float32)).all(), "a kernel wrote out of bounds"
    return tuple(view.copy() for _, view in buffers.values())


def inputs(B, T, D, dtype, h_max=None, carry=True, seed=0):
    """Spec inputs in the op's dtypes; h rescaled so max|h| == h_max when given."""
    ins = random_inputs(np.random.default_rng(seed), B, T, D, carry=carry)
    if h_max is not None:
        ins[0] = ins[0] / np.abs(ins[0]).max() * h_max
    ins[0], ins[1] = ins[0].astype(NP_DTYPE[dtype]), ins[1].astype(NP_DTYPE[dtype])
    return ins


def assert_matches_oracle(dtype, ins, out, kappa=8.0):
    """SCR_SPEC section 5 op tier: max abs err <= tol x max(1, max|h|, max|m_prev|)."""
    h, m_prev, *rest = ins
    with np.errstate(over="ignore"):  # exp(-s) -> inf is the oracle's sigmoid saturating to 0
        ref_m, ref_num, ref_den = realign_spec_f64(h, m_prev, *rest, kappa=kappa)
    m, num, den = out
    scale = max(1.0, float(np.abs(h).max(initial=0)), float(np.abs(m_prev).max(initial=0)))
    assert np.isfinite(m.astype(np.float32)).all()
    assert np.abs(m.astype(np.float64) - ref_m).max(initial=0) <= TOL[dtype] * scale
    assert np.abs(num - ref_num).max() <= 1e-5 * max(1.0, np.abs(ref_num).max())
    assert np.abs(den - ref_den).max() <= 1e-5 * max(1.0, np.abs(ref_den).max())


CASES = [  # (B, T, D, h_max, carry): T=1 decode with a carry, odd D, chunk edges, |h| = 6e4
    (1, 1, 1, None, True), (3, 1, 33, None, True), (2, 300, 33, None, False),
    (1, 257, 40, 6e4, True), (2, 128, 64, None, True),
    (2, 1, 600, 6e4, True), (1, 1, 300, None, False),  # the T == 1 kernel: D > its block
]


@pytest.mark.parametrize("via", ["enqueue", "plan"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize(("B", "T", "D", "h_max", "carry"), CASES)
def test_kernels_match_the_spec_oracle(emu, via, dtype, B, T, D, h_max, carry):
    """Oracle: realign_spec_f64 (SCR_SPEC section 2, token by token, float64)."""
    ins = inputs(B, T, D, dtype, h_max, carry)
    assert_matches_oracle(dtype, ins, run_realign(emu, via, dtype, *ins))


def test_carry_scan_spans_several_steps(emu):
    """Oracle: realign_spec_f64. T = 4500 is 36 chunks: more than one step (ROWS x
    CARRY_PER_THREAD = 32 chunks) of the cross-chunk scan, with float16 |h| = 6e4."""
    k = launch_plan.constants()
    T = 4500
    assert T / k["CHUNK"] > k["ROWS"] * k["CARRY_PER_THREAD"]
    ins = inputs(1, T, 3, "float16", h_max=6e4, carry=True)
    assert_matches_oracle("float16", ins, run_realign(emu, "plan", "float16", *ins))


def test_split_calls_equal_one_call(emu):
    """Oracle: the spec's chunking invariant; threading (num, den) through two calls equals
    one call over all tokens."""
    h, m_prev, num_in, den_in, *params = inputs(2, 300, 33, "float32")
    m, num, den = run_realign(emu, "enqueue", "float32", h, m_prev, num_in, den_in, *params)
    m1, num1, den1 = run_realign(emu, "plan", "float32", h[:, :130], m_prev[:, :130], num_in,
                                 den_in, *params)
    m2, num2, den2 = run_realign(emu, "plan", "float32", h[:, 130:], m_prev[:, 130:], num1, den1,
                                 *params)
    np.testing.assert_allclose(np.concatenate([m1, m2], axis=1), m, rtol=0, atol=1e-5)
    np.testing.assert_allclose(num2, num, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(den2, den, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("via", ["enqueue", "plan"])
def test_empty_call_passes_the_carries_through(emu, via):
    """Oracle: the spec with T = 0: no prefix sums, so num_out = num_in and den_out = den_in."""
    h, m_prev, num_in, den_in, *params = inputs(2, 0, 5, "float32")
    m, num, den = run_realign(emu, via, "float32", h, m_prev, num_in, den_in, *params)
    assert m.shape == (2, 0, 5)
    np.testing.assert_array_equal(num, num_in)
    np.testing.assert_array_equal(den, den_in)


def test_launcher_rejects_bad_arguments_without_launching(emu):
    """Oracle: the C contract in realign_kernel.h (cudaErrorInvalidValue = 1, nothing run)."""
    null = ctypes.c_void_p(0)
    bad = [(0, 1, 1, 1, 8.0), (2, 1, 1, 1, 8.0), (0, 1, 1, 0, 8.0), (0, 1, 1, 1, 0.0),
           (0, 1, 1, 1, float("nan")), (0, 65536, 1, 1, 8.0)]
    for dtype, B, T, D, kappa in bad:
        rc = emu.scr_realign_enqueue(ctypes.c_int(dtype), *[null] * 11, ctypes.c_int(B),
                                     ctypes.c_int(T), ctypes.c_int(D), ctypes.c_float(kappa), null,
                                     null)
        assert rc == 1, (dtype, B, T, D, kappa)
