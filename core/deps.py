"""Lazy imports of heavy optional dependencies.

torch, onnx, onnxruntime and tensorrt are imported where they are used, never
at module import time, so a torch-free or CPU-only install imports every
scredge package. A missing one becomes a `ScredgeError` naming the extra that
installs it.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from scredge.errors import ScredgeError

# module -> (pip extra that provides it, what it is needed for)
_EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("ref", "the reference model, export and training"),
    "safetensors": ("ref", "reading and writing checkpoints"),
    "onnx": ("export", "building and checking ONNX graphs"),
    "onnxscript": ("export", "the ONNX export of the Realign op"),
    "onnxruntime": ("ort", "running ONNX artifacts"),
    "tensorrt": ("trt", "building and running TensorRT engines"),
    "polygraphy": ("trt", "building TensorRT engines (`scredge build --backend tensorrt`)"),
    "tokenizers": ("ort", "Hugging Face tokenizers (an artifact's tokenizer.json)"),
    "jinja2": ("ort", "rendering a model's chat template"),
    "llguidance": ("ort", "constrained output (JSON Schema, regex, Lark grammars)"),
    "transformers": ("hf", "`scredge export-hf` (and the Hugging Face oracle in tests)"),
    "starlette": ("serve", "`scredge serve`, the HTTP server"),
    "uvicorn": ("serve", "`scredge serve`, the HTTP server"),
    "ray": ("ray", "`scredge serve --ray`, the server on Ray Serve replicas"),
    "matplotlib": ("plot", "the latency plot of `scredge bench --sweep --plot`"),
    "cuda": ("gpu", "launching the Realign kernel from the Python plugin (cuda-python)"),
}


def require(module: str) -> ModuleType:
    """Import `module` or raise a ScredgeError that says which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra, purpose = _EXTRAS.get(module.split(".")[0], ("", "this feature"))
        fix = (
            f"pip install 'scredge[{extra}]'" if extra else f"pip install {module}"
        )
        raise ScredgeError(
            f"optional dependency '{module}' is needed for {purpose} but cannot be imported",
            received=f"ImportError: {exc}",
            expected=f"an importable '{module}'",
            fix=fix,
        ) from exc


# what `scredge info` reports on, in that order
OPTIONAL_MODULES = ("numpy", "torch", "safetensors", "onnx", "onnxscript", "onnxruntime",
                    "tensorrt", "tensorrt_rtx", "transformers")
_DISTRIBUTIONS = {"tensorrt_rtx": "tensorrt-rtx-cu13"}  # module -> pip distribution name


def installed_versions(modules: tuple[str, ...] = OPTIONAL_MODULES) -> dict[str, str | None]:
    """module -> its distribution's version, "installed" when that is unknown, or None when
    the module is absent; found without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for mod in modules:
        if not available(mod):
            out[mod] = None
            continue
        try:
            out[mod] = version(_DISTRIBUTIONS.get(mod, mod))
        except PackageNotFoundError:
            out[mod] = "installed"
    return out


def available(module: str) -> bool:
    """True when `module` can be found, without importing it."""
    return importlib.util.find_spec(module) is not None

