"""Which `scr.Realign` onnxruntime runs: the custom-op kernel library, or the function body.

Every exported graph carries a model-local function `scr.Realign` (standard ops), so any
onnxruntime runs it. Where the kernel library of `scredge.plugins.realign.ort_kernel` is
built (`make kernels`), the runtime registers it (`SessionOptions.register_custom_ops_library`)
and onnxruntime runs one fused node per SCR layer instead of the function's ~19 (SCR_SPEC
section 2, v3). onnxruntime (checked with 1.32) prefers a registered kernel over a local
function of the same domain and name, so the graph is handed over unchanged.

Before it is used, a library is probed once per process on a one-node graph whose local
function is deliberately *wrong* (it passes m_prev, num_in and den_in through): the probe
passes only when onnxruntime registered the library, ran its kernel rather than the
function, and the kernel's outputs match the spec. Anything else (an older onnxruntime than
the library's headers, a broken file, a changed dispatch rule) falls back to the function
body with the reason, never a crash.

$SCREDGE_REALIGN_KERNEL: `auto` (default: the kernel where it passes the probe), `function`
(never the kernel), `custom-op` (the kernel or a ScredgeError saying why not).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scredge.contract import DOMAIN, OP_TYPE, REALIGN_INPUTS, REALIGN_OUTPUTS
from scredge.deps import require
from scredge.errors import ScredgeError

ENV_CHOICE = "SCREDGE_REALIGN_KERNEL"
CHOICES = ("auto", "function", "custom-op")
CUSTOM_OP, FUNCTION = "custom-op", "function"


@dataclass(frozen=True)
class RealignKernel:
    """What runs the graph's Realign nodes: `kind` 'custom-op' (with `library`) or
    'function'; `reason` says why the function body when the kernel was not used."""

    kind: str
    library: Path | None = None
    reason: str = ""

    def describe(self) -> str:
        if self.kind == CUSTOM_OP:
            return f"custom-op kernel ({self.library})"
        return f"function body ({self.reason})" if self.reason else "function body"


def requested() -> str:
    choice = os.environ.get(ENV_CHOICE, "auto") or "auto"
    if choice not in CHOICES:
        raise ScredgeError(f"unknown ${ENV_CHOICE}", received=repr(choice),
                           expected=f"one of {list(CHOICES)}", fix=f"unset {ENV_CHOICE}")
    return choice


def pick(device: str = "cpu", library: Path | None = None) -> RealignKernel:
    """The Realign implementation for an onnxruntime session on `device` ('cpu' | 'cuda'):
    the library (given, else the built one for that device) when it passes the probe."""
    from scredge.plugins.realign.ort_kernel import find_library

    choice = requested()
    if choice == FUNCTION:
        return RealignKernel(FUNCTION, reason=f"${ENV_CHOICE}=function")
    if library is None:
        library, why = find_library(cuda=device == "cuda")
    else:
        why = "" if Path(library).is_file() else f"no file {library}"
    picked = (RealignKernel(FUNCTION, reason=why) if library is None or why
              else probe(Path(library).resolve(), device))
    if choice == CUSTOM_OP and picked.kind != CUSTOM_OP:
        raise ScredgeError("the Realign custom-op kernel cannot be used", received=picked.reason,
                           expected=f"a library that passes the probe ({ENV_CHOICE}=custom-op)",
                           fix=f"build it (make kernels), or unset {ENV_CHOICE}")
    return picked


def register(options, kernel: RealignKernel) -> None:
    """Register the kernel's library on onnxruntime SessionOptions (nothing for 'function')."""
    if kernel.kind == CUSTOM_OP:
        options.register_custom_ops_library(str(kernel.library))


def probe(library: Path, device: str = "cpu") -> RealignKernel:
    """Register `library` on a one-node graph (see the module docstring) and check that its
    kernel, not the function, ran, with the spec's outputs. Cached per file and device."""
    stat = library.stat()
    return _probe(library, stat.st_mtime_ns, stat.st_size, device)


@functools.cache
def _probe(library: Path, _mtime: int, _size: int, device: str) -> RealignKernel:
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        opts.register_custom_ops_library(str(library))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        return RealignKernel(FUNCTION, reason=f"onnxruntime {ort.__version__} refused "
                                              f"{library.name}: {_first_line(exc)}")
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda"
                 else ["CPUExecutionProvider"])
    feed, expected = _probe_case()
    try:
        model = _probe_model()
    except ScredgeError as exc:  # onnx (the ort extra) missing: the probe cannot be built
        return RealignKernel(FUNCTION, reason=f"cannot probe {library.name}: {exc.what}")
    try:
        session = ort.InferenceSession(model, opts, providers=providers)
        got = session.run(None, feed)
    except Exception as exc:  # noqa: BLE001
        return RealignKernel(FUNCTION, reason=f"{library.name} failed the probe: "
                                              f"{_first_line(exc)}")
    if np.allclose(got[0], feed["m_prev"]):
        return RealignKernel(FUNCTION, reason=f"onnxruntime {ort.__version__} ran the graph's "
                                              "function instead of the registered kernel")
    if not all(np.allclose(g, e, rtol=1e-5, atol=1e-5) for g, e in zip(got, expected)):
        return RealignKernel(FUNCTION, reason=f"{library.name} computed wrong outputs in the "
                                              "probe")
    return RealignKernel(CUSTOM_OP, library=library)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[-1][:300]


def _probe_case() -> tuple[dict, list]:
    """B=1, T=2, D=2 inputs and the spec's outputs, computed here step by step."""
    h = np.array([[[1.0, -2.0], [0.5, 3.0]]], np.float32)
    m_prev = np.array([[[0.25, 0.5], [-1.0, 2.0]]], np.float32)
    num_in, den_in = np.array([[0.5, -0.5]], np.float32), np.array([[1.5]], np.float32)
    w_r, b_r = np.array([0.3, -0.2], np.float32), np.array([0.1], np.float32)
    w_g, b_g = np.array([-0.4, 0.6], np.float32), np.array([0.2], np.float32)
    kappa, num, den, m = 8.0, num_in[0].astype(np.float64), float(den_in[0, 0]), []
    for t in range(2):
        x = h[0, t].astype(np.float64)
        e = math.exp(kappa * math.tanh((x @ w_r + b_r[0]) / kappa) - kappa)
        num, den = num + e * x, den + e
        beta = 1.0 / (1.0 + math.exp(-(x @ w_g + b_g[0])))
        m.append((1 - beta) * m_prev[0, t] + beta * num / den)
    feed = dict(zip(REALIGN_INPUTS, (h, m_prev, num_in, den_in, w_r, b_r, w_g, b_g)))
    return feed, [np.array([m], np.float32), num[None].astype(np.float32),
                  np.array([[den]], np.float32)]


@functools.cache
def _probe_model() -> bytes:
    """One scr.Realign node, every input fed, and a local function that is wrong on purpose
    (identities), so the outputs tell which of the two ran."""
    onnx = require("onnx")
    h = onnx.helper
    f32 = onnx.TensorProto.FLOAT
    shapes = {"h": [1, 2, 2], "m_prev": [1, 2, 2], "num_in": [1, 2], "den_in": [1, 1],
              "w_r": [2], "b_r": [1], "w_g": [2], "b_g": [1]}
    out_shapes = dict(zip(REALIGN_OUTPUTS, ([1, 2, 2], [1, 2], [1, 1])))
    body = [h.make_node("Identity", [src], [dst])
            for src, dst in zip(("m_prev", "num_in", "den_in"), REALIGN_OUTPUTS)]
    function = h.make_function(DOMAIN, OP_TYPE, list(REALIGN_INPUTS), list(REALIGN_OUTPUTS),
                               body, [h.make_opsetid("", 17)], attributes=["kappa"])
    node = h.make_node(OP_TYPE, list(REALIGN_INPUTS), list(REALIGN_OUTPUTS), domain=DOMAIN,
                       kappa=8.0)
    graph = h.make_graph([node], "realign_probe",
                         [h.make_tensor_value_info(n, f32, s) for n, s in shapes.items()],
                         [h.make_tensor_value_info(n, f32, s) for n, s in out_shapes.items()])
    model = h.make_model(graph, functions=[function],
                         opset_imports=[h.make_opsetid("", 17), h.make_opsetid(DOMAIN, 1)])
    return model.SerializeToString()
