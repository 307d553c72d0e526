"""Packaging: a normal (non-editable) install in a fresh, torch-free virtual environment
maps every import name from its folder and runs the console script.
Oracle: the installed files themselves, imported by a separate interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_installs_torch_free(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels),
                    str(ROOT)], check=True, timeout=300, cwd=tmp_path)
    (wheel,) = wheels.glob("scredge-*.whl")
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # numpy only: the core dependency set, no torch, no onnxruntime
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", str(wheel)], check=True,
                   timeout=300, cwd=tmp_path)
    code = ("import importlib.util as u, scredge, scredge.ref, scredge.export, scredge.runtime, "
            "scredge.plugins, scredge.serve, sys; assert 'torch' not in sys.modules; "
            "assert u.find_spec('torch') is None; "
            "print(scredge.runtime.__file__)")
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path, timeout=60).stdout
    assert str(env_dir) in out and "runtime" in out  # from site-packages, not the source tree
    cli = subprocess.run([str(env_dir / "bin" / "scredge"), "info"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=60, env={**os.environ, "PYTHONPATH": ""})
    assert cli.returncode == 0 and "torch         not installed" in cli.stdout
    # the reference model refuses cleanly, naming the extra to install
    ref = subprocess.run([str(env_dir / "bin" / "scredge"), "init", "--out",
                          str(tmp_path / "w.safetensors")], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert ref.returncode == 2 and "pip install 'scredge[ref]'" in ref.stderr
    # so does the server without its extra (starlette, uvicorn)
    srv = subprocess.run([str(env_dir / "bin" / "scredge"), "serve", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert srv.returncode == 2 and "pip install 'scredge[serve]'" in srv.stderr
