"""Build realign_kernel.cu into one fatbin that the Python plugin launches by name.

A fatbin holds machine code for every GPU family we target plus PTX of the newest,
so one file serves a data-centre GPU, a workstation and (built with JetPack's own
nvcc) a Jetson. The installed nvcc decides what it can build: CUDA 13 dropped
sm_72 (Xavier), so that arch is skipped here with the reason logged; JetPack 5/6's
nvcc still has it, and the CMake build of the C++ plugin handles Jetson builds.

    python -m scredge.plugins.realign.build_kernels [--out PATH] [--arch 87 ...]
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from scredge.errors import ScredgeError
from scredge.plugins.realign.launch_plan import HEADER

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("realign_kernel.cu")
ENV_VAR = "SCREDGE_REALIGN_FATBIN"
BUILD_COMMAND = "python -m scredge.plugins.realign.build_kernels"
# Jetson Xavier, Jetson Orin; A100, RTX 30xx/A10, RTX 40xx/L4, H100/H200; RTX 50xx/Blackwell.
REQUESTED_ARCHS = ("72", "87", "80", "86", "89", "90", "120")
# --threads 0: one nvcc thread per arch. No --use_fast_math: the spec's tanh/exp stay accurate.
NVCC_FLAGS = ("-O3", "-std=c++17", "--threads", "0")


def fatbin_path() -> Path:
    """Where the plugin looks for the fatbin: $SCREDGE_REALIGN_FATBIN, else build/ here."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path(__file__).with_name("build") / "realign_kernel.fatbin"


def find_nvcc() -> str | None:
    """nvcc on PATH, else under $CUDA_HOME / $CUDA_PATH / /usr/local/cuda."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def _require_nvcc() -> str:
    nvcc = find_nvcc()
    if nvcc is None:
        raise ScredgeError("nvcc (the CUDA compiler) not found", received="no nvcc on PATH",
                           expected="a CUDA toolkit, 11.8 or newer",
                           fix="install the CUDA toolkit (JetPack has it) or set CUDA_HOME")
    return nvcc


@functools.cache  # one nvcc query per process: select_archs runs for every build
def nvcc_version(nvcc: str) -> str:
    """'13.0' from `nvcc --version` ('unknown' if it does not say)."""
    text = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release (\d+\.\d+)", text)
    return match.group(1) if match else "unknown"


@functools.cache
def nvcc_archs(nvcc: str) -> set[str] | None:
    """The sm_XX numbers this nvcc can generate code for, or None if it cannot list them."""
    done = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return set(re.findall(r"\bsm_(\d+)\b", done.stdout))


def select_archs(archs=None, nvcc: str | None = None) -> tuple[list[str], dict[str, str]]:
    """Split the requested archs into (buildable, {skipped arch: reason}) for this nvcc."""
    nvcc = nvcc or _require_nvcc()
    requested = [str(a).removeprefix("sm_") for a in (archs or REQUESTED_ARCHS)]
    known = nvcc_archs(nvcc)
    if known is None:  # an nvcc too old to list them: let it decide
        return sorted(set(requested), key=int), {}
    version = nvcc_version(nvcc)
    skipped = {
        a: f"nvcc {version} cannot generate sm_{a} (not in `nvcc --list-gpu-code`); "
           f"build it with a CUDA toolkit that still has it (JetPack's nvcc for sm_72)"
        for a in requested if a not in known
    }
    return sorted({a for a in requested if a in known}, key=int), skipped


def gencode_flags(archs: list[str]) -> list[str]:
    """SASS for every arch plus PTX of the newest, which newer GPUs JIT-compile."""
    newest = max(archs, key=int)
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return [*flags, f"-gencode=arch=compute_{newest},code=compute_{newest}"]


def _compile(kind: list[str], out: Path, archs) -> Path:
    nvcc = _require_nvcc()
    build, skipped = select_archs(archs, nvcc)
    for arch, why in skipped.items():
        log.warning("skipping sm_%s: %s", arch, why)
    if not build:
        raise ScredgeError("none of the requested GPU archs can be built by this nvcc",
                           received=sorted(skipped), expected=f"some of {nvcc_archs(nvcc)}",
                           fix="pass --arch with an arch listed by `nvcc --list-gpu-code`")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def command(tmp: Path) -> list[str]:
        cmd = [nvcc, *kind, *NVCC_FLAGS, *gencode_flags(build), "-o", str(tmp), str(SOURCE)]
        log.info("building sm_%s: %s", ",".join(build), " ".join(cmd))
        return cmd

    compile_atomically(out, command, "nvcc failed to build the Realign kernels")
    return out


def compile_atomically(out: Path, command, failure: str) -> list[str]:
    """Run the compiler command `command(tmp)` writing a temporary file beside `out`, then
    rename it to `out`: the library is there whole or not at all. A failed compile is a
    ScredgeError `failure` with the compiler's output; returns the command run."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # same folder: os.replace is atomic
    cmd = command(tmp)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ScredgeError(failure, received=(done.stderr or done.stdout)[-2000:],
                               expected="a clean compile", fix=" ".join(cmd))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return cmd


def build_fatbin(out: Path, archs=None) -> Path:
    """Compile the kernels into `out` (written whole or not at all); skipped archs are logged."""
    return _compile(["-fatbin"], out, archs)


def build_launcher_library(out: Path, archs=None) -> Path:
    """A shared library exporting scr_realign_enqueue (the C launcher), for ctypes checks."""
    return _compile(["-shared", "-Xcompiler", "-fPIC"], out, archs)


# Xavier (sm_72) is a JetPack 5 device: CUDA 11.4, PTX ISA 7.4. CUDA 13's nvcc no longer
# targets it, but a CUDA 12 ptxas (PyPI: nvidia-cuda-nvcc-cu12) still assembles sm_72.
LEGACY_ARCH, LEGACY_PTX_ISA, LOWEST_NVCC13_ARCH = "72", "7.4", "75"


def find_cuda12_ptxas() -> str | None:
    """ptxas of a CUDA 12 toolkit: $SCREDGE_PTXAS12, else the nvidia-cuda-nvcc-cu12 wheel's."""
    env = os.environ.get("SCREDGE_PTXAS12")
    if env:
        return env if Path(env).is_file() else None
    try:
        import nvidia.cuda_nvcc as wheel  # the CUDA 12 wheel's package; CUDA 13's is nvidia.cu13
    except ImportError:
        return None
    for root in getattr(wheel, "__path__", []):
        ptxas = Path(root) / "bin" / "ptxas"
        if ptxas.is_file():
            return str(ptxas)
    return None


def assemble_legacy_cubin(out: Path, ptxas: str) -> Path:
    """sm_72 machine code from our source where nvcc cannot build it: nvcc's PTX for its
    lowest arch, declared as PTX ISA 7.4 for sm_72 (what JetPack 5's toolchain reads),
    assembled by a CUDA 12 ptxas. ptxas rejects any instruction sm_72 or ISA 7.4 lacks, so
    a clean assembly shows the kernels build for Xavier; JetPack's own nvcc is the way to
    build for it (CMakeLists.txt)."""
    nvcc = _require_nvcc()
    out = Path(out)
    ptx = out.with_suffix(".sm75.ptx")
    cmd = [nvcc, "-ptx", *NVCC_FLAGS[:2], f"-arch=compute_{LOWEST_NVCC13_ARCH}", "-o", str(ptx),
           str(SOURCE)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ScredgeError("nvcc failed to emit PTX for the Realign kernels",
                           received=done.stderr[-2000:], fix=" ".join(cmd))
    text = ptx.read_text()
    text = re.sub(r"^\.version \d+\.\d+$", f".version {LEGACY_PTX_ISA}", text, count=1, flags=re.M)
    text = re.sub(r"^\.target sm_\d+$", f".target sm_{LEGACY_ARCH}", text, count=1, flags=re.M)
    legacy = out.with_suffix(f".sm{LEGACY_ARCH}.ptx")
    legacy.write_text(text)
    cmd = [ptxas, f"-arch=sm_{LEGACY_ARCH}", "-O3", str(legacy), "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ScredgeError(f"ptxas could not assemble the kernels for sm_{LEGACY_ARCH}",
                           received=done.stderr[-2000:], fix=" ".join(cmd))
    return out


def require_fatbin() -> Path:
    """The fatbin's path, or a ScredgeError that says how to build it."""
    path = fatbin_path()
    fix = f"{BUILD_COMMAND} --out {path}"
    if not path.is_file():
        raise ScredgeError("Realign kernel fatbin not found", received=str(path),
                           expected=f"a fatbin built from {SOURCE.name} (or ${ENV_VAR} set to one)",
                           fix=fix)
    if ENV_VAR not in os.environ:  # a stale default build would launch kernels that changed
        newest_source = max(SOURCE.stat().st_mtime, HEADER.stat().st_mtime)
        if path.stat().st_mtime < newest_source:
            raise ScredgeError("Realign kernel fatbin is older than its source", received=str(path),
                               expected=f"built after the last change to {SOURCE.name}", fix=fix)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=BUILD_COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help=f"fatbin to write (default: ${ENV_VAR} or {fatbin_path()})")
    parser.add_argument("--arch", action="append", default=None,
                        help=f"GPU arch, repeatable (default: {' '.join(REQUESTED_ARCHS)})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        build, skipped = select_archs(args.arch)
        out = build_fatbin(args.out or fatbin_path(), args.arch)
    except ScredgeError as err:
        print(f"error: {err}")
        return 1
    print(f"wrote {out}: sm_{' sm_'.join(build)} + PTX compute_{max(build, key=int)}"
          + (f"; skipped sm_{' sm_'.join(skipped)} (see the warnings above)" if skipped else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
