"""The Realign launch sequence as data, for launching the fatbin's kernels by name.

This mirrors `scr_realign_enqueue` in realign_kernel.cu launch for launch (same
kernels, grids, argument order and workspace layout), so the Python TensorRT
plugin runs exactly what the C++ plugin runs. The constants are parsed from
realign_kernel.h, the one place they are defined. Pure Python: no torch, no numpy,
no CUDA needed to plan.
"""

from __future__ import annotations

import ctypes
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from scredge.errors import ScredgeError

HEADER = Path(__file__).with_name("realign_kernel.h")
INT32_MAX = 2**31 - 1
DTYPES = {"float32": "f32", "float16": "f16"}
ARG_CTYPES = {"ptr": ctypes.c_void_p, "i32": ctypes.c_int32, "f32": ctypes.c_float}  # by kind
PTR_KEYS = ("h", "m_prev", "num_in", "den_in", "w_r", "b_r", "w_g", "b_g", "m", "num_out",
            "den_out")


@dataclass(frozen=True)
class KernelLaunch:
    name: str  # extern "C" kernel symbol
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int
    args: tuple[tuple[str, int | float], ...]  # ("ptr"|"i32"|"f32", value) in parameter order


@cache
def constants() -> dict[str, int]:
    """`#define SCR_REALIGN_<NAME> <integer>` lines of realign_kernel.h, as {NAME: value}."""
    found = re.findall(r"^#define\s+SCR_REALIGN_(\w+)\s+(\d+)\b", HEADER.read_text(), re.M)
    values = {name: int(value) for name, value in found}
    needed = {"CHUNK", "DTILE", "ROWS", "TOKEN_WARPS", "STEP_THREADS", "WS_ALIGN",
              "MAX_GRID_YZ"}
    assert needed <= values.keys(), f"realign_kernel.h lacks {sorted(needed - values.keys())}"
    return values


def kernel_names() -> tuple[str, ...]:
    """Every kernel the plans launch (the T == 1 kernel first), both dtypes."""
    return ("scr_realign_step_f32", "scr_realign_step_f16",
            "scr_realign_token_scalars_f32", "scr_realign_token_scalars_f16",
            "scr_realign_chunk_totals_f32", "scr_realign_chunk_totals_f16",
            "scr_realign_chunk_carries",
            "scr_realign_chunk_apply_f32", "scr_realign_chunk_apply_f16")


def _align(nbytes: int) -> int:
    step = constants()["WS_ALIGN"]
    return -(-nbytes // step) * step


def _check_sizes(B: int, T: int, D: int) -> None:
    """The limits scr_realign_enqueue enforces (valid_sizes in realign_kernel.cu)."""
    k = constants()
    tiles = math.ceil((D + 1) / k["DTILE"])
    if B < 0 or T < 0 or D < 1:
        raise ScredgeError("Realign sizes out of range", received=f"B={B}, T={T}, D={D}",
                           expected="B >= 0, T >= 0, D >= 1")
    if B * T > INT32_MAX or B > k["MAX_GRID_YZ"] or tiles > k["MAX_GRID_YZ"]:
        raise ScredgeError(
            "Realign sizes exceed the kernel's launch limits", received=f"B={B}, T={T}, D={D}",
            expected=f"B*T <= {INT32_MAX}, B <= {k['MAX_GRID_YZ']}, "
                     f"D < {k['MAX_GRID_YZ'] * k['DTILE']}",
            fix="split the batch or the sequence into several calls (the carries chain them)")


def _regions(B: int, T: int, D: int) -> tuple[int, int]:
    """Aligned bytes of one [B*T] float32 region and of S [B, chunks, D+1] float32."""
    chunks = math.ceil(T / constants()["CHUNK"])
    return _align(4 * B * T), _align(4 * B * chunks * (D + 1))


def workspace_bytes(B: int, T: int, D: int) -> int:
    """Device workspace for these sizes: e [B*T] | beta [B*T] | S [B, chunks, D+1] (float32);
    none for T <= 1."""
    _check_sizes(B, T, D)
    if B == 0 or T <= 1:  # T == 1 runs the single-token kernel, which needs none
        return 0
    scalars, sums = _regions(B, T, D)
    return 2 * scalars + sums


def plan(dtype: str, ptrs: dict[str, int], B: int, T: int, D: int, kappa: float,
         workspace: int) -> list[KernelLaunch]:
    """The launches of one Realign call, in stream order (empty when B == 0)."""
    if dtype not in DTYPES:
        raise ScredgeError("Realign dtype not supported", received=dtype,
                           expected=sorted(DTYPES))
    missing = sorted(set(PTR_KEYS) - ptrs.keys())
    if missing:
        raise ScredgeError("Realign device pointers missing", received=sorted(ptrs),
                           expected=list(PTR_KEYS), fix=f"add {missing}")
    if not (math.isfinite(kappa) and kappa > 0):
        raise ScredgeError("Realign kappa must be a positive finite float", received=kappa,
                           expected="kappa > 0 (SCR_SPEC default 8.0)")
    _check_sizes(B, T, D)
    if B == 0:
        return []
    k = constants()
    x = DTYPES[dtype]
    p = {key: ("ptr", int(ptrs[key])) for key in PTR_KEYS}
    scalars, _ = _regions(B, T, D)
    e, beta, sums = (("ptr", workspace + offset) for offset in (0, scalars, 2 * scalars))
    chunks = math.ceil(T / k["CHUNK"])
    tiles = math.ceil(D / k["DTILE"])
    tiles_with_den = math.ceil((D + 1) / k["DTILE"])  # S has D+1 columns: the last sums e_t
    block = (k["DTILE"], k["ROWS"], 1)
    i32, f32 = (lambda v: ("i32", int(v))), (lambda v: ("f32", float(v)))

    if T == 1:  # decode: the single-token kernel, one block per batch row
        return [KernelLaunch(
            f"scr_realign_step_{x}", (B, 1, 1), (k["STEP_THREADS"], 1, 1), 0,
            tuple(p[key] for key in PTR_KEYS) + (i32(D), f32(kappa)))]
    launches = []
    if T > 0:
        launches.append(KernelLaunch(
            f"scr_realign_token_scalars_{x}",
            (math.ceil(B * T / k["TOKEN_WARPS"]), 1, 1), (32 * k["TOKEN_WARPS"], 1, 1), 0,
            (p["h"], p["w_r"], p["b_r"], p["w_g"], p["b_g"], e, beta, i32(B * T), i32(D),
             f32(kappa))))
        launches.append(KernelLaunch(
            f"scr_realign_chunk_totals_{x}", (chunks, tiles_with_den, B), block, 0,
            (p["h"], e, sums, i32(T), i32(D))))
    launches.append(KernelLaunch(
        "scr_realign_chunk_carries", (tiles_with_den, B, 1), block, 0,
        (sums, p["num_in"], p["den_in"], p["num_out"], p["den_out"], i32(T), i32(D))))
    if T > 0:
        launches.append(KernelLaunch(
            f"scr_realign_chunk_apply_{x}", (chunks, tiles, B), block, 0,
            (p["h"], p["m_prev"], e, beta, sums, p["m"], i32(T), i32(D))))
    return launches
