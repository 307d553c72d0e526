"""setuptools hooks (pyproject's `[tool.setuptools.cmdclass]`): the package build also builds
the `scr.Realign` onnxruntime custom-op library (docs/realign-kernel.md), where it can.

`build_py` runs the same entry as `make kernels` (`scredge.plugins.realign.ort_kernel.main
--if-possible`) after the Python files are in place:

- a wheel (`pip install .`, `pip wheel .`): the library goes into the wheel's copy of the
  package, `scredge/plugins/realign/build/`, so an install has it in site-packages exactly
  where `ort_kernel.find_library` looks (beside the shipped sources);
- an editable install (`pip install -e .`): into `plugins/realign/build/` of the checkout,
  where `make kernels` puts it (a no-op when that one is up to date).

onnxruntime's headers are fetched into the cache outside the tree (~/.cache/scredge) and are
never part of the wheel. With no compiler, no headers (no npm, no network) or any failure,
the install goes on: one line says the kernel was skipped and why (pip shows a build's
output with -v), a stamp beside the missing library keeps the reason for `scredge info`,
and the runtime runs the graph's function body.

`bdist_wheel` tags a wheel that holds the library for this platform (py3-none-<platform>:
the library depends on the machine, not on the Python ABI) instead of `any`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import sysconfig
import types
from pathlib import Path

from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py
from setuptools.discovery import find_package_path

BUILDER = "scredge.plugins.realign.ort_kernel"
BUILT_FLAG = "scredge_realign_kernel_built"  # set on the Distribution when the wheel has it


@contextlib.contextmanager
def _builder_from_tree(package_dir: dict[str, str], root: Path):
    """The builder module loaded from the tree being built. The package is not installed
    while it is built (and another scredge may be), so each parent package is a bare module
    whose path is the folder pyproject's package-dir maps it to; their __init__ files do not
    run (the top one imports numpy, which a build environment need not have)."""
    parts = BUILDER.split(".")
    names = [".".join(parts[:i]) for i in range(1, len(parts))]
    saved = {n: m for n, m in sys.modules.items() if n.split(".")[0] == parts[0]}
    for name in saved:
        del sys.modules[name]
    try:
        for name in names:
            module = types.ModuleType(name)
            module.__path__ = [str(root / find_package_path(name, package_dir, str(root)))]
            sys.modules[name] = module
        yield importlib.import_module(BUILDER)
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == parts[0]]:
            del sys.modules[name]
        sys.modules.update(saved)


class BuildPy(build_py):
    """build_py, then the kernel library where it can be built (see the module docstring)."""

    def run(self) -> None:
        super().run()
        root = Path(self.distribution.src_root or os.getcwd()).resolve()
        try:
            with _builder_from_tree(self.distribution.package_dir or {}, root) as builder:
                package = BUILDER.rpartition(".")[0]
                folder = (builder.HERE if self.editable_mode
                          else Path(self.build_lib, *package.split(".")))
                out = builder.default_library(folder)
                builder.main(["--if-possible", "--out", str(out)])
                built = builder.is_current(out)
        except Exception as exc:  # noqa: BLE001 - any failure skips the kernel, never the install
            print(f"skipped: the scr.Realign kernel build failed ({type(exc).__name__}: "
                  f"{str(exc).strip()[:240]}); the runtime runs the graph's function body",
                  flush=True)
            built = False
        setattr(self.distribution, BUILT_FLAG, built and not self.editable_mode)


class BdistWheel(bdist_wheel):
    """bdist_wheel, tagged for this platform when the wheel holds the kernel library."""

    def get_tag(self) -> tuple[str, str, str]:
        impl, abi, plat = super().get_tag()
        if getattr(self.distribution, BUILT_FLAG, False) and plat == "any":
            plat = sysconfig.get_platform().lower().replace("-", "_").replace(".", "_")
        return impl, abi, plat
