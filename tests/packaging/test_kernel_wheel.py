"""Packaging: the package build builds the `scr.Realign` onnxruntime kernel where it can
(tools/package_build.py, with the builder `make kernels` runs), and skips it with one line
where it cannot, the wheel still built. Oracle: the wheel's own file list and tag, pip's
build output, and the runtime's choice (`realign_kernel.pick`) in a separate interpreter
importing the unpacked wheel, i.e. what site-packages holds after `pip install`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = "scredge/plugins/realign/build/libscr_realign_ort.so"
CLEAN_ENV = ("SCREDGE_REALIGN_ORT_LIB", "SCREDGE_REALIGN_KERNEL", "PYTHONPATH")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    return {**env, **extra}


def _tree(tmp_path: Path) -> Path:
    """A copy of the checkout's files (tracked and not ignored): no build/ of an earlier
    build, whose library would be reused, and nothing written into the real tree."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard",
                             "-z"], capture_output=True, timeout=60)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot list the project's files")
    src = tmp_path / "src"
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    return src


def _build_wheel(tmp_path: Path, **env: str) -> tuple[str, Path]:
    """`pip wheel --no-build-isolation` of a copy of the tree: (pip's -v output, the wheel)."""
    pytest.importorskip("setuptools.command.bdist_wheel")  # setuptools >= 70.1, as pyproject
    src, wheels = _tree(tmp_path), tmp_path / "wheels"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps",
                           "--no-build-isolation", "-w", str(wheels), str(src)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env=_env(**env))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = wheels.glob("scredge-*.whl")
    return done.stdout + done.stderr, wheel


def _runtime_choice(wheel: Path, tmp_path: Path) -> tuple[str, str, str]:
    """(scredge's folder, kind, library or reason) as the runtime sees the unpacked wheel."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    code = ("import scredge, scredge.runtime.realign_kernel as k; p = k.pick('cpu'); "
            "print(scredge.__file__); print(p.kind); print(p.library or p.reason)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env=_env(PYTHONPATH=str(site)), check=True)
    where, kind, detail = out.stdout.strip().splitlines()
    assert Path(where).is_relative_to(site), where  # the wheel's copy, not the checkout's
    return str(site), kind, detail


@pytest.mark.slow
def test_wheel_carries_the_kernel_library(tmp_path):
    """With g++ and the headers: the library and its stamp are inside the wheel (tagged for
    this platform), no onnxruntime header is, and the installed runtime registers it."""
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler here")
    output, wheel = _build_wheel(tmp_path)
    skipped = [ln.strip() for ln in output.splitlines() if "skipped:" in ln]
    if skipped and "compiler" not in skipped[0]:
        pytest.skip(f"the kernel could not be built here: {skipped[0]}")  # no npm / network
    names = zipfile.ZipFile(wheel).namelist()
    assert LIBRARY in names and LIBRARY.replace(".so", ".json") in names
    assert not [n for n in names if Path(n).name.startswith("onnxruntime")]  # never shipped
    assert not wheel.name.endswith("-any.whl")
    site, kind, library = _runtime_choice(wheel, tmp_path)
    assert kind == "custom-op" and library == str(Path(site, LIBRARY))


def test_wheel_without_a_compiler_skips_the_kernel(tmp_path):
    """$CXX naming no program: the wheel is built anyway, pip's output has one line saying
    the kernel was skipped and why, the wheel holds no library (tag `any`) but a stamp with
    the reason, and the installed runtime runs the function body, repeating that reason."""
    output, wheel = _build_wheel(tmp_path, CXX=str(tmp_path / "no-such-g++"))
    skipped = [ln.strip() for ln in output.splitlines() if "skipped:" in ln]
    assert len(skipped) == 1 and "no C++ compiler" in skipped[0] and "no-such-g++" in skipped[0]
    names = zipfile.ZipFile(wheel).namelist()
    assert LIBRARY not in names and LIBRARY.replace(".so", ".json") in names
    assert wheel.name.endswith("-any.whl")
    _, kind, reason = _runtime_choice(wheel, tmp_path)
    assert kind == "function" and "skipped: no C++ compiler" in reason


def test_sdist_carries_the_build_hook(tmp_path):
    """pyproject names tools/package_build.py as setuptools' build_py: an sdist without it
    could not be built into a wheel (MANIFEST.in includes it)."""
    import tarfile

    src, out = _tree(tmp_path), tmp_path / "sdist"
    code = f"from setuptools import build_meta as b; print(b.build_sdist({str(out)!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=src, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    with tarfile.open(out / done.stdout.strip().splitlines()[-1]) as tar:
        assert [n for n in tar.getnames() if n.endswith("/tools/package_build.py")]
