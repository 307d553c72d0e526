"""The Realign kernel builds for every target GPU, and the Python launch plan matches it.

Runs on CPU: nvcc compiles without a GPU. The plan is checked against the kernels'
own signatures parsed from realign_kernel.cu and against CUDA's launch limits, so
the Python plugin's launches cannot drift from the CUDA code.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from scredge.errors import ScredgeError
from scredge.plugins.realign import build_kernels, launch_plan

HERE = Path(build_kernels.__file__).parent
SOURCE = HERE / "realign_kernel.cu"
HEADER = HERE / "realign_kernel.h"
HOST_CUDA = Path(__file__).parent / "host_cuda"  # stand-in cuda_runtime_api.h for the preprocessor
EDGE_SIZES = [(1, 1, 1), (1, 1, 128), (3, 1, 33), (1, 100_000, 128), (3, 100_000, 33),
              (4, 257, 512), (2, 5000, 1), (1, 0, 8), (0, 16, 8), (65535, 1, 4096)]
KINDS = {"int": "i32", "float": "f32"}

needs_nvcc = pytest.mark.skipif(build_kernels.find_nvcc() is None,
                                reason="nvcc (CUDA toolkit) not installed on this machine")


def kernel_signatures() -> dict[str, list[str]]:
    """{kernel: [param kind, ...]} from the `extern "C" __global__` definitions in the .cu."""
    pattern = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?'
                         r'(\w+)\s*\(([^)]*)\)')
    found = {}
    for name, params in pattern.findall(SOURCE.read_text()):
        kinds = []
        for param in params.split(","):
            words = " ".join(param.split())
            kinds.append("ptr" if "*" in words else KINDS[words.rsplit(" ", 1)[0]])
        found[name] = kinds
    return found


def fatbin_entries(data: bytes) -> list[tuple[str, int, bytes]]:
    """(kind 'elf'|'ptx', sm number, payload) per entry of a fatbin (CUDA's container format)."""
    magic, _, header_size, total = struct.unpack_from("<IHHQ", data, 0)
    assert magic == 0xBA55ED50, "not a fatbin"
    entries, offset = [], header_size
    while offset < header_size + total:
        kind, _, entry_header, padded = struct.unpack_from("<HHIQ", data, offset)
        (arch,) = struct.unpack_from("<I", data, offset + 28)
        payload = data[offset + entry_header: offset + entry_header + padded]
        entries.append(({1: "ptx", 2: "elf"}.get(kind, str(kind)), arch, payload))
        offset += entry_header + padded
    return entries


def cuobjdump_archs(path: Path, flag: str) -> set[int]:
    out = subprocess.run(["cuobjdump", flag, str(path)], capture_output=True, text=True).stdout
    return {int(a) for a in re.findall(r"sm_(\d+)", out)}


@pytest.fixture(scope="module")
def fatbin(tmp_path_factory) -> Path:
    if build_kernels.find_nvcc() is None:
        pytest.skip("nvcc (CUDA toolkit) not installed on this machine")
    return build_kernels.build_fatbin(tmp_path_factory.mktemp("fatbin") / "realign_kernel.fatbin")


def test_fatbin_holds_every_buildable_arch_and_ptx(fatbin):
    """Oracle: nvcc's own list of archs it can build (`--list-gpu-code`), and the fatbin's
    entry headers (or cuobjdump where installed)."""
    built, skipped = build_kernels.select_archs()
    assert set(built) | set(skipped) == set(build_kernels.REQUESTED_ARCHS)
    assert all("--list-gpu-code" in why for why in skipped.values())
    entries = fatbin_entries(fatbin.read_bytes())
    elf = {arch for kind, arch, _ in entries if kind == "elf"}
    ptx = {arch for kind, arch, _ in entries if kind == "ptx"}
    assert elf == {int(a) for a in built}
    assert ptx == {max(int(a) for a in built)}
    if shutil.which("cuobjdump"):
        assert cuobjdump_archs(fatbin, "--list-elf") == elf
        assert cuobjdump_archs(fatbin, "--list-ptx") == ptx


def test_every_arch_exports_every_planned_kernel(fatbin):
    """Oracle: the symbol names inside each (uncompressed) ELF of the fatbin."""
    elves = [payload for kind, _, payload in fatbin_entries(fatbin.read_bytes())
             if kind == "elf" and payload.startswith(b"\x7fELF")]
    assert elves, "every ELF entry is compressed; nothing to look into"
    for payload in elves:
        for name in launch_plan.kernel_names():
            assert name.encode() in payload, name


@needs_nvcc
def test_skipped_archs_are_reported_with_the_reason():
    """Oracle: `nvcc --list-gpu-code`; CUDA 13 has dropped sm_72, which must be reported."""
    nvcc = build_kernels.find_nvcc()
    known = build_kernels.nvcc_archs(nvcc)
    built, skipped = build_kernels.select_archs(["72", "87", "sm_90"], nvcc)
    assert set(built) == {a for a in ("72", "87", "90") if a in known}
    assert set(skipped) == {a for a in ("72", "87", "90") if a not in known}
    for arch, why in skipped.items():
        assert f"sm_{arch}" in why and build_kernels.nvcc_version(nvcc) in why


@needs_nvcc
def test_kernels_assemble_for_xavier_sm72(tmp_path):
    """Oracle: a CUDA 12 ptxas, which refuses any instruction sm_72 / PTX ISA 7.4 lacks.
    CUDA 13's nvcc dropped sm_72, so CI lowers its PTX and assembles it with the ptxas of
    the nvidia-cuda-nvcc-cu12 wheel (a dev dependency)."""
    if build_kernels.find_nvcc() is None:
        pytest.skip("nvcc (CUDA toolkit) not installed on this machine")
    ptxas = build_kernels.find_cuda12_ptxas()
    if ptxas is None:
        pytest.skip("no CUDA 12 ptxas: pip install 'nvidia-cuda-nvcc-cu12>=12.4,<13'")
    cubin = build_kernels.assemble_legacy_cubin(tmp_path / "realign_sm72.cubin", ptxas)
    data = cubin.read_bytes()
    assert data[:4] == b"\x7fELF"  # a CUDA cubin is an ELF image
    names = set(re.findall(rb"scr_realign_\w+", data))
    assert {n.encode() for n in launch_plan.kernel_names()} <= names


def test_failed_build_leaves_no_file(tmp_path, monkeypatch):
    """Oracle: the file system. A broken source must not leave a half-written fatbin."""
    broken = tmp_path / "broken.cu"
    broken.write_text('extern "C" __global__ void k( { }\n')
    monkeypatch.setattr(build_kernels, "SOURCE", broken)
    out = tmp_path / "out" / "realign_kernel.fatbin"
    with pytest.raises(ScredgeError, match="nvcc failed"):
        build_kernels.build_fatbin(out, archs=["80"])
    assert list(out.parent.iterdir()) == []


def test_header_constants_match_the_preprocessor():
    """Oracle: the C preprocessor's view of realign_kernel.h (`cpp -dM`)."""
    cpp = shutil.which("cpp")
    if cpp is None:
        pytest.skip("no C preprocessor (cpp) on this machine")
    out = subprocess.run([cpp, "-dM", "-I", str(HOST_CUDA), str(HEADER)], capture_output=True,
                         text=True, check=True).stdout
    defined = {m[0]: int(m[1]) for m in re.findall(r"#define SCR_REALIGN_(\w+) (\d+)\b", out)}
    assert defined and launch_plan.constants() == defined


def test_plan_names_exactly_the_kernels_in_the_source():
    """Oracle: the `extern "C" __global__` definitions in realign_kernel.cu."""
    assert set(launch_plan.kernel_names()) == set(kernel_signatures())


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize(("B", "T", "D"), EDGE_SIZES)
def test_plan_launches_fit_cuda_and_the_kernel_signatures(dtype, B, T, D):
    """Oracle: the kernels' parameter kinds parsed from the .cu, CUDA's launch limits, and the
    kernels' index maps (token = blockIdx.x*TOKEN_WARPS + warp; chunk = blockIdx.x,
    column = blockIdx.y*DTILE + threadIdx.x, batch row = blockIdx.z; the carry scan has
    the column on x and the batch row on y)."""
    k = launch_plan.constants()
    signatures = kernel_signatures()
    ptrs = {key: 0x10_0000 * (i + 1) for i, key in enumerate(launch_plan.PTR_KEYS)}
    workspace = 0x7000_0000
    launches = launch_plan.plan(dtype, ptrs, B, T, D, 8.0, workspace)
    if B == 0:
        assert launches == []
        return
    names = [launch.name.rsplit("_", 1)[0] if launch.name.endswith(("_f32", "_f16"))
             else launch.name for launch in launches]
    expected = ["scr_realign_token_scalars", "scr_realign_chunk_totals",
                "scr_realign_chunk_carries", "scr_realign_chunk_apply"]
    if T == 1:
        expected = ["scr_realign_step"]  # decode: one block per batch row
    assert names == (expected if T > 0 else ["scr_realign_chunk_carries"])
    suffix = {"float32": "_f32", "float16": "_f16"}[dtype]
    for launch in launches:
        assert launch.name in signatures
        assert launch.name == "scr_realign_chunk_carries" or launch.name.endswith(suffix)
        assert [kind for kind, _ in launch.args] == signatures[launch.name], launch.name
        gx, gy, gz = launch.grid
        bx, by, bz = launch.block
        assert 1 <= gx <= 2**31 - 1 and 1 <= gy <= 65535 and 1 <= gz <= 65535, launch
        assert bx * by * bz <= 1024 and bz <= 64 and launch.shared_bytes <= 48 * 1024, launch
        for kind, value in launch.args:
            if kind == "i32":
                assert -(2**31) <= value < 2**31
    by_name = {name: launch for name, launch in zip(names, launches)}
    if T == 1:
        step = by_name["scr_realign_step"]
        assert step.grid == (B, 1, 1) and step.block == (k["STEP_THREADS"], 1, 1)
        return
    carries = by_name["scr_realign_chunk_carries"]
    assert carries.grid[0] * k["DTILE"] >= D + 1 and carries.grid[1] == B
    if T > 0:
        token = by_name["scr_realign_token_scalars"]
        assert token.grid[0] * k["TOKEN_WARPS"] >= B * T and token.block[0] == 32 * k["TOKEN_WARPS"]
        for name, columns in (("scr_realign_chunk_totals", D + 1), ("scr_realign_chunk_apply", D)):
            launch = by_name[name]
            assert launch.grid[0] * k["CHUNK"] >= T and launch.grid[2] == B
            assert launch.grid[1] * k["DTILE"] >= columns
            assert launch.block == (k["DTILE"], k["ROWS"], 1)


@pytest.mark.parametrize(("B", "T", "D"), [(1, 2, 1), (3, 100_000, 33), (2, 129, 512)])
def test_workspace_regions_are_aligned_disjoint_and_inside(B, T, D):
    """Oracle: the layout stated in realign_kernel.h (e [B*T] | beta [B*T] | S [B,chunks,D+1],
    float32, each region starting on a SCR_REALIGN_WS_ALIGN boundary)."""
    k = launch_plan.constants()
    base = 0x7000_0000
    size = launch_plan.workspace_bytes(B, T, D)
    launches = launch_plan.plan("float32", {key: 0 for key in launch_plan.PTR_KEYS}, B, T, D, 8.0,
                                base)
    token = launches[0]
    e, beta = token.args[5][1], token.args[6][1]
    sums = launches[1].args[2][1]
    chunks = math.ceil(T / k["CHUNK"])
    regions = [(e, 4 * B * T), (beta, 4 * B * T), (sums, 4 * B * chunks * (D + 1))]
    for start, nbytes in regions:
        assert (start - base) % k["WS_ALIGN"] == 0 and base <= start
        assert start + nbytes <= base + size
    for (s0, n0), (s1, _) in zip(regions, regions[1:]):
        assert s0 + n0 <= s1


def test_single_token_calls_need_no_workspace():
    """Oracle: realign_kernel.h (T == 1 runs one kernel that keeps e and beta in shared
    memory), so a decode profile asks TensorRT for no workspace."""
    assert launch_plan.workspace_bytes(8, 1, 4096) == 0
    (step,) = launch_plan.plan("float16", {key: 0 for key in launch_plan.PTR_KEYS}, 8, 1, 4096,
                               8.0, 0)
    assert step.name == "scr_realign_step_f16"


def test_plan_rejects_what_the_kernels_cannot_run():
    """Oracle: the limits scr_realign_enqueue enforces (valid_sizes in realign_kernel.cu)."""
    ptrs = {key: 0 for key in launch_plan.PTR_KEYS}
    for B, T, D in [(1, 1, 0), (-1, 1, 1), (65536, 1, 1), (2, 2**30, 1), (1, 1, 65535 * 32)]:
        with pytest.raises(ScredgeError):
            launch_plan.plan("float32", ptrs, B, T, D, 8.0, 0)
    with pytest.raises(ScredgeError, match="dtype"):
        launch_plan.plan("bfloat16", ptrs, 1, 1, 1, 8.0, 0)
    with pytest.raises(ScredgeError, match="kappa"):
        launch_plan.plan("float32", ptrs, 1, 1, 1, 0.0, 0)
    with pytest.raises(ScredgeError, match="missing"):
        launch_plan.plan("float32", {"h": 0}, 1, 1, 1, 8.0, 0)


def test_missing_fatbin_names_the_build_command(tmp_path, monkeypatch):
    """Oracle: the file system; the error must carry the command that builds the file."""
    missing = tmp_path / "nowhere" / "realign_kernel.fatbin"
    monkeypatch.setenv(build_kernels.ENV_VAR, str(missing))
    assert build_kernels.fatbin_path() == missing
    with pytest.raises(ScredgeError) as info:
        build_kernels.require_fatbin()
    assert info.value.received == str(missing)
    assert info.value.fix == f"{build_kernels.BUILD_COMMAND} --out {missing}"


def test_stale_default_fatbin_is_refused(tmp_path, monkeypatch):
    """Oracle: file times. A default-location fatbin older than the .cu would launch kernels
    whose signatures may have changed."""
    stale = tmp_path / "realign_kernel.fatbin"
    stale.write_bytes(b"old")
    os.utime(stale, (1, 1))
    monkeypatch.delenv(build_kernels.ENV_VAR, raising=False)
    monkeypatch.setattr(build_kernels, "fatbin_path", lambda: stale)
    with pytest.raises(ScredgeError, match="older than its source") as info:
        build_kernels.require_fatbin()
    assert build_kernels.BUILD_COMMAND in info.value.fix
    os.utime(stale)  # now newer than the sources
    assert build_kernels.require_fatbin() == stale
