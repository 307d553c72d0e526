"""The op tier on TensorRT: the `Realign` plugin alone against the golden op cases.

A one-node engine is built from the artifact's own `scr.Realign` node (plugin mode: the
parser must import it as the plugin, exactly one plugin layer) with one profile covering
the golden cases, then each case runs through it. Building works without a GPU with
TensorRT for RTX (tested); running needs a GPU.
"""

from __future__ import annotations

import numpy as np

from scredge.contract import ONNX_FILE
from scredge.contract import REALIGN_INPUTS as INPUTS
from scredge.contract import REALIGN_OUTPUTS as OUTPUTS
from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.golden_file import Golden
from scredge.parity.graph_surgery import realign_alone
from scredge.runtime.loaders import Artifact, verified_graph

IN_NAMES, OUT_NAMES = INPUTS, OUTPUTS


def realign_profile(golden: Golden, width: int) -> dict[str, tuple]:
    """One profile: batch and tokens up to the largest golden case; the rest static."""
    B = max(a[0].shape[0] for a in golden.op_inputs)
    T = max(a[0].shape[1] for a in golden.op_inputs)
    bt = ((1, 1, width), (1, 1, width), (B, T, width))
    return {"h": bt, "m_prev": bt, "num_in": ((1, width), (1, width), (B, width)),
            "den_in": ((1, 1), (1, 1), (B, 1))}


def build_realign_engine(trt, artifact: Artifact, golden: Golden, backend: str,
                         cc: tuple[int, int] | None) -> bytes:
    from scredge.builder.trt_build import build_model_bytes

    onnx = require("onnx")
    graph, _ = verified_graph(artifact, ONNX_FILE)  # the bytes the manifest lists
    model = onnx.load_from_string(realign_alone(graph, golden.kappa))
    engine, _ = build_model_bytes(trt, model, backend, "plugin",
                                  [realign_profile(golden, artifact.config.d_model)], cc,
                                  None, 0, lambda s: None, expected_plugin_layers=1)
    return engine


def trt_case_runner(trt, engine_bytes: bytes, cuda):
    """run_case(feed) -> [m, num_out, den_out] through the one-node engine (needs a GPU)."""
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise ScredgeError("TensorRT could not deserialize the one-node Realign engine",
                           received="deserialize_cuda_engine() returned None",
                           fix="check the GPU and that the Realign plugin is registered")

    def run_case(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        ctx = engine.create_execution_context()
        stream = cuda.stream()
        ptrs: list[int] = []
        try:
            B, T, D = feed["h"].shape
            outs = [np.empty((B, T, D), feed["h"].dtype), np.empty((B, D), np.float32),
                    np.empty((B, 1), np.float32)]
            for name in IN_NAMES:
                a = np.ascontiguousarray(feed[name])
                ptrs.append(cuda.malloc(a.nbytes))
                cuda.upload(ptrs[-1], a, stream)
                ctx.set_input_shape(name, a.shape)
                ctx.set_tensor_address(name, ptrs[-1])
            for name, a in zip(OUT_NAMES, outs):
                ptrs.append(cuda.malloc(a.nbytes))
                ctx.set_tensor_address(name, ptrs[-1])
            if not ctx.execute_async_v3(stream):
                raise ScredgeError("TensorRT execution of the Realign engine failed",
                                   fix="see the TensorRT messages above")
            for p, a in zip(ptrs[len(IN_NAMES):], outs):
                cuda.download(a, p, stream)
            cuda.sync(stream)
            return outs
        finally:
            for p in ptrs:
                cuda.free(p)
            cuda.destroy_stream(stream)

    run_case.keepalive = (runtime, engine)  # the engine must not outlive its runtime
    return run_case
