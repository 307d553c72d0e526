"""`scredge export-triton FOLDER OUT`: a Triton Inference Server model repository for the
Python backend, serving the artifact with scredge's batching (serve/triton_model.py).

    OUT/NAME/config.pbtxt        backend "python", decoupled (streamed) responses, inputs
                                 and outputs, instance group, the server's limits
    OUT/NAME/1/model.py          TritonPythonModel: scredge's runtime on the artifact
    OUT/NAME/1/artifact/...      a copy of FOLDER, checked against its manifest.json

OUT is written beside itself and renamed into place (core/destination.py): it must be new
or an empty folder, and nothing is left half-written.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from scredge.contract import MANIFEST_FILE
from scredge.destination import check_folder_place, replace_folder
from scredge.errors import ScredgeError
from scredge.serve.triton_model import INPUTS, OUTPUTS, PARAMETERS

KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
MODEL_PY = '''"""Triton Python-backend model for the scredge artifact in ./artifact (written by
`scredge export-triton`; needs `pip install 'scredge[ort]'` in Triton's Python)."""

from pathlib import Path

from scredge.serve.triton_model import ScredgeTritonModel


class TritonPythonModel(ScredgeTritonModel):
    ARTIFACT = Path(__file__).resolve().parent / "artifact"
'''


def export_triton(folder: str | Path, out: str | Path, *, model_name: str | None = None,
                  instances: int = 1, kind: str = "cpu", max_batch: int = 16,
                  max_queue: int = 64, timeout_s: float = 600.0,
                  max_context: int | None = None, shutdown_grace_s: float = 30.0,
                  backend: str = "auto", device: str = "auto") -> Path:
    """Write the repository; returns the model's folder inside OUT."""
    from scredge.artifact import read_config, verify_manifest

    folder, out = Path(folder), Path(out).absolute()
    name = model_name or folder.absolute().name
    _check_settings(name, instances, kind, max_batch, max_queue)
    check_out(out)
    manifest = verify_manifest(folder)  # as every command reads an artifact
    read_config(folder, manifest)
    params = {"max_batch": max_batch, "max_queue": max_queue, "timeout_s": timeout_s,
              "max_context": "" if max_context is None else max_context,
              "shutdown_grace_s": shutdown_grace_s, "backend": backend, "device": device}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        model = tmp / name
        (model / "1").mkdir(parents=True)
        (model / "config.pbtxt").write_text(config_pbtxt(name, instances, kind, params))
        (model / "1" / "model.py").write_text(MODEL_PY)
        _copy_artifact(folder, manifest, model / "1" / "artifact")
        os.chmod(tmp, 0o755)
        replace_folder(tmp, out, check_out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / name


def config_pbtxt(name: str, instances: int, kind: str, params: dict) -> str:
    """Triton's model configuration (protobuf text format)."""
    inputs = ",\n".join(f'  {{ name: "{n}" data_type: {t} dims: {d}'
                        f'{" optional: true" if opt else ""} }}' for n, t, d, opt in INPUTS)
    outputs = ",\n".join(f'  {{ name: "{n}" data_type: {t} dims: {d} }}'
                         for n, t, d in OUTPUTS)
    settings = "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: "{params[k]}" }} }}'
                         for k in PARAMETERS if k in params)
    return (f'# written by scredge export-triton; the parameters are the server\'s limits\n'
            f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
            f"model_transaction_policy {{ decoupled: true }}\n"
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
            f"instance_group [ {{ count: {instances} kind: {KINDS[kind]} }} ]\n{settings}\n")


def check_out(out: Path) -> None:
    """OUT is new or an empty folder (checked at the start and again at the rename)."""
    check_folder_place(out)
    if out.exists() and any(out.iterdir()):
        raise ScredgeError("OUT is not empty; export-triton writes only a new or empty "
                           "folder", received=str(out),
                           fix="choose another OUT, or remove it yourself to write it again")


def _check_settings(name: str, instances: int, kind: str, max_batch: int,
                    max_queue: int) -> None:
    if not _NAME.fullmatch(name):
        raise ScredgeError("invalid Triton model name", received=repr(name)[:140],
                           expected="letters, digits, '_', '.', '-' (not first), <= 128",
                           fix="pass --model-name")
    if kind not in KINDS:
        raise ScredgeError("unknown instance kind", received=repr(kind),
                           expected=f"one of {list(KINDS)}")
    if instances < 1 or max_batch < 1 or max_queue < 0:
        raise ScredgeError("invalid Triton model settings",
                           received=f"instances {instances}, max_batch {max_batch}, "
                                    f"max_queue {max_queue}",
                           expected="instances >= 1, max_batch >= 1, max_queue >= 0")


def _copy_artifact(folder: Path, manifest: dict, dest: Path) -> None:
    """Every listed file and manifest.json, then the copy verified against the manifest:
    the bytes written are the bytes the manifest hashes, whatever changed meanwhile."""
    from scredge.artifact import member_path, verify_manifest

    for name in [*manifest["files"], MANIFEST_FILE]:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(member_path(folder, name, "manifest file"), target)
        os.chmod(target, 0o644)
    verify_manifest(dest)
