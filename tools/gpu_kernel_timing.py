"""Timing half of `gpu_check_kernel.py` (run through its `main`, without --no-timing):
median CUDA-event times of the Realign kernel against the decomposed torch op and
torch.compile, as GB/s against the device's copy bandwidth. Imports only
`gpu_kernel_common.py` (never `gpu_check_kernel.py`, which imports this module)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_kernel_common, beside this file
from gpu_kernel_common import (  # noqa: E402
    KAPPA,
    CLauncher,
    build,
    empty_outputs,
    load_scredge,
    make_inputs,
)

TIMING_SHAPES = ((1, 1, 512), (8, 1, 4096), (1, 4096, 512), (4, 4096, 4096), (1, 100_000, 512))
COMPILE_SHAPES = ((1, 4096, 512), (4, 4096, 4096))


def median_ms(fn, warmup=5, iters=30) -> float:
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_bandwidth_gbs() -> float | None:
    """Theoretical DRAM bandwidth from the memory clock and bus width, if the GPU reports them."""
    import torch

    props = torch.cuda.get_device_properties(0)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not (clock_khz and bus_bits):
        try:
            from cupy.cuda import runtime

            clock_khz = runtime.deviceGetAttribute(36, 0)  # cudaDevAttrMemoryClockRate
            bus_bits = runtime.deviceGetAttribute(37, 0)  # cudaDevAttrGlobalMemoryBusWidth
        except (ImportError, RuntimeError):
            return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None


def copy_bandwidth_gbs() -> float:
    """What a plain device-to-device copy of 1 GiB reaches (read + write)."""
    import torch

    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), warmup=3, iters=10)
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def op_bytes(B, T, D, dtype) -> int:
    """Bytes the op must move at least: read h, m_prev, carries, weights; write m, carries."""
    x = 4 if dtype == "float32" else 2
    return 3 * B * T * D * x + 2 * (B * D + B) * 4 + (2 * D + 2) * 4


def time_shape(kernel, launch_plan, realign_reference, dtype, B, T, D, with_compile) -> list[dict]:
    """Median times of the kernel, the decomposed torch op and (optionally) torch.compile of it."""
    import torch

    ins = make_inputs(B, T, D, dtype, True, None, 0)
    outs = empty_outputs(ins)
    ws = torch.empty(max(1, launch_plan.workspace_bytes(B, T, D)), dtype=torch.uint8, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    impls = {
        "kernel": lambda: kernel(dtype, ins, outs, ws.data_ptr(), stream),
        "torch": lambda: realign_reference(*ins, KAPPA),
    }
    if with_compile and (B, T, D) in COMPILE_SHAPES:
        try:
            compiled = torch.compile(realign_reference, dynamic=False)
            compiled(*ins, KAPPA)
            impls["torch.compile"] = lambda: compiled(*ins, KAPPA)
        except Exception as err:  # report a compiler failure, keep timing the rest
            print(f"  torch.compile failed for {dtype} {(B, T, D)}: {err!r}")
    return [{"dtype": dtype, "B": B, "T": T, "D": D, "impl": impl, "ms": (ms := median_ms(fn)),
             "GBps": op_bytes(B, T, D, dtype) / (ms * 1e-3) / 1e9} for impl, fn in impls.items()]


def run_timing(workdir: Path, with_compile: bool) -> list[dict]:
    import torch

    build_kernels, launch_plan, realign_reference = load_scredge()
    library = workdir / "libscr_realign_kernel.so"
    if not library.exists():
        build(workdir, build_kernels)
    kernel = CLauncher(library)
    rows = []
    for dtype in ("float16", "float32"):
        for B, T, D in TIMING_SHAPES:
            rows += time_shape(kernel, launch_plan, realign_reference, dtype, B, T, D, with_compile)
            torch.cuda.empty_cache()
    return rows


def print_timing(rows: list[dict], peak: float | None, copy: float) -> None:
    print(f"\ntiming: median of 30 CUDA-event timings; GB/s = bytes the op must move / time; "
          f"device copy {copy:.0f} GB/s" + (f", peak {peak:.0f} GB/s" if peak else ""))
    print(f"  {'dtype':8s} {'B':>2s} {'T':>7s} {'D':>5s} {'impl':14s} {'ms':>9s} {'GB/s':>7s} "
          f"{'%copy':>6s} {'vs torch':>8s}")
    torch_ms = {(r["dtype"], r["B"], r["T"], r["D"]): r["ms"] for r in rows if r["impl"] == "torch"}
    for r in rows:
        speedup = torch_ms[(r["dtype"], r["B"], r["T"], r["D"])] / r["ms"]
        print(f"  {r['dtype']:8s} {r['B']:2d} {r['T']:7d} {r['D']:5d} {r['impl']:14s} "
              f"{r['ms']:9.4f} {r['GBps']:7.0f} {100 * r['GBps'] / copy:5.0f}% {speedup:7.2f}x")
