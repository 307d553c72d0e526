"""The C++ `scr::Realign` plugin library, built with its CMake and driven through IPluginV3.

Needs TensorRT headers (10.x; none of the PyPI wheels has them): point
SCREDGE_TRT_INCLUDE_DIR at a folder with NvInferRuntime.h (a TensorRT tarball's include/,
JetPack's /usr/include/aarch64-linux-gnu, or NVIDIA/TensorRT's include/ at your release).
The library links against a stand-in libnvinfer.so.10 (plugin_api/stub_nvinfer.cpp)
unless SCREDGE_TRT_LIBRARY names the real one. No GPU needed: the harness checks names,
fields, the errors for a missing or mistyped kappa and for wrong dtypes and shapes,
output shapes and types, formats, workspace size, serialization, clone and context
attachment; enqueue is driven only into the launcher's argument check.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from scredge.plugins.realign import launch_plan

HERE = Path(__file__).parent / "plugin_api"
SOURCE_DIR = launch_plan.HEADER.parent
TRT_INCLUDE = os.environ.get("SCREDGE_TRT_INCLUDE_DIR")
TRT_LIBRARY = os.environ.get("SCREDGE_TRT_LIBRARY")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (TRT_INCLUDE and (Path(TRT_INCLUDE) / "NvInferRuntime.h").is_file()),
                       reason="no TensorRT headers: set SCREDGE_TRT_INCLUDE_DIR to a folder with "
                              "NvInferRuntime.h"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("cmake", "nvcc", "g++")),
                       reason="cmake, nvcc and g++ are needed to build the plugin"),
]


def run(cmd, **kwargs):
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def plugin_library(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("plugin_api")
    library = TRT_LIBRARY
    if not library:
        library = tmp / "stub" / "libnvinfer.so.10"
        library.parent.mkdir()
        run(["g++", "-std=c++17", "-shared", "-fPIC", "-isystem", TRT_INCLUDE, "-isystem",
             cuda_include(), "-Wl,-soname,libnvinfer.so.10", HERE / "stub_nvinfer.cpp", "-o",
             library])
    build = tmp / "build"
    run(["cmake", "-S", SOURCE_DIR, "-B", build, f"-DTENSORRT_INCLUDE_DIR={TRT_INCLUDE}",
         f"-DTENSORRT_LIBRARY={library}", "-DSCR_CUDA_ARCHITECTURES=80"])
    run(["cmake", "--build", build, "-j", "2"])
    return build / "libscr_realign_plugin.so"


def test_plugin_library_exports_only_the_loader_entry_points(plugin_library):
    """Oracle: the dynamic symbol table (`nm -D`); TensorRT's loadLibrary looks up
    getCreators and setLoggerFinder, and nothing of ours should leak beyond them."""
    if shutil.which("nm") is None:
        pytest.skip("no nm on this machine")
    out = run(["nm", "-D", "--defined-only", plugin_library]).stdout
    ours = {line.split()[-1] for line in out.splitlines()
            if line.split()[-1].startswith(("get", "set", "scr", "_ZN3scr"))}
    assert ours == {"getCreators", "setLoggerFinder"}


def test_plugin_api_contract(plugin_library, tmp_path):
    """Oracle: SCR_SPEC section 2 (names, field, shapes, dtypes), the IPluginV3 contract as
    the TensorRT headers declare it, and launch_plan.workspace_bytes for the workspace."""
    harness = tmp_path / "harness"
    run(["g++", "-std=c++17", "-isystem", TRT_INCLUDE, "-isystem", cuda_include(), "-I",
         SOURCE_DIR, HERE / "harness.cpp", "-ldl", "-o", harness])
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(
        filter(None, [str(Path(TRT_LIBRARY or plugin_library).parent),
                      str(plugin_library.parent.parent / "stub"),
                      os.environ.get("LD_LIBRARY_PATH")]))}
    done = subprocess.run([str(harness), str(plugin_library),
                           str(launch_plan.workspace_bytes(2, 300, 33))],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "ALL CHECKS PASSED" in done.stdout, done.stdout + done.stderr


def cuda_include() -> str:
    """The CUDA toolkit's include folder (cuda_runtime_api.h), as nvcc itself reports it."""
    dryrun = subprocess.run(["nvcc", "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                            capture_output=True, text=True).stderr
    for top in re.findall(r"TOP=(\S+)", dryrun):
        if (Path(top) / "include" / "cuda_runtime_api.h").is_file():
            return str(Path(top) / "include")
    return "/usr/local/cuda/include"
