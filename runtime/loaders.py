"""Loaders open things; runners run them (Polygraphy's split).

`open_artifact` checks an artifact folder against its manifest and reads its config;
`load_ort` builds an onnxruntime session for it (the onnxruntime-optimised graph that
`scredge build --backend ort` saved, when it matches this onnxruntime, else `model.onnx`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scredge.artifact import MANIFEST_FILE, ONNX_FILE, read_config, verify_manifest
from scredge.config import SCRConfig
from scredge.deps import require
from scredge.device import cuda_device_count, gpu_unavailable_reason
from scredge.errors import ScredgeError


@dataclass(frozen=True)
class Artifact:
    folder: Path
    config: SCRConfig
    settings: dict  # the whole config.json
    manifest: dict

    @property
    def dtype(self) -> str:
        return self.settings.get("export", {}).get("dtype", "float32")

    @property
    def kv_dtype(self) -> np.dtype:
        return np.dtype(np.float16 if self.dtype == "float16" else np.float32)

    @property
    def engines(self) -> dict:
        return self.manifest.get("engines", {})

    @property
    def quantization(self) -> dict:
        """config.json's `quantization` section ({} for a float artifact)."""
        return self.settings.get("quantization") or {}

    @property
    def precision(self) -> str:
        """What runs: 'float32', 'float16', or e.g. 'int4 weight-only (rtn, block 32)'."""
        q = self.quantization
        if not q:
            return self.dtype
        return f"int{q['bits']} weight-only ({q['method']}, block {q['block_size']})"

    def graph_file(self, backend: str) -> str:
        """The ONNX graph a backend ('ort' or 'trt') reads: a quantized artifact holds one
        per backend (SCR_SPEC section 4), a float one `model.onnx` for both."""
        graphs = self.quantization.get("graphs", {})
        return graphs.get(backend, {}).get("file", ONNX_FILE)


def open_artifact(folder: str | Path) -> Artifact:
    folder = Path(folder)
    if not folder.is_dir():
        raise ScredgeError("artifact folder not found", received=str(folder),
                           expected="a folder written by `scredge export`",
                           fix="export one: scredge export --preset tiny --out " + str(folder))
    if not (folder / MANIFEST_FILE).is_file() or not (folder / ONNX_FILE).is_file():
        raise ScredgeError("not an scredge artifact folder", received=str(folder),
                           expected=f"{ONNX_FILE}, {MANIFEST_FILE}, config.json inside",
                           fix="export one: scredge export --preset tiny --out " + str(folder))
    manifest = verify_manifest(folder)
    config, settings = read_config(folder)
    return Artifact(folder, config, settings, manifest)


def artifact_summary(folder: str | Path) -> dict:
    """What `scredge info FOLDER` says: precision and the graph each backend reads."""
    a = open_artifact(folder)
    return {"folder": str(folder), "precision": a.precision,
            "graphs": {b: a.graph_file(b) for b in ("ort", "trt")},
            "engines": sorted(a.engines)}


def ort_providers(device: str) -> list[str]:
    """device 'auto' | 'cpu' | 'cuda' -> onnxruntime providers, CUDA only if it can run."""
    ort = require("onnxruntime")
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    has_cuda = "CUDAExecutionProvider" in available and cuda_device_count() > 0
    if device == "cuda" and not has_cuda:
        why = gpu_unavailable_reason() or f"onnxruntime providers: {available}"
        raise ScredgeError("cannot run onnxruntime on CUDA here", received=why,
                           fix="pip install 'scredge[gpu]' (onnxruntime-gpu) on a machine "
                               "with an NVIDIA GPU, or use device='cpu'")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if has_cuda else [
        "CPUExecutionProvider"]


def session_options(threads: int | None = None, optimize: bool = True):
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def load_ort(artifact: Artifact, device: str = "auto", threads: int | None = None):
    """An OrtRunner for `artifact`; uses its saved optimised graph when it fits."""
    ort = require("onnxruntime")
    from scredge.runtime.runners.ort_runner import OrtRunner

    providers = ort_providers(device)
    kind = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
    path = artifact.folder / artifact.graph_file("ort")
    optimized = artifact.engines.get(f"ort-{kind}")
    if optimized and optimized.get("onnxruntime") == ort.__version__:
        path = artifact.folder / optimized["file"]
        opts = session_options(threads, optimize=False)  # already optimised offline
    else:
        opts = session_options(threads)
    session = ort.InferenceSession(str(path), opts, providers=providers)
    return OrtRunner(session, artifact.config, artifact.kv_dtype)
