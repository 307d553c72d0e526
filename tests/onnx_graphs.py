"""Small ONNX models built in the tests: one MatMul, in memory, or saved with its weight in
an external data file and listed by hash as an artifact folder lists its files."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def matmul_model(w: np.ndarray, rows: int = 1, opset: int = 21):
    """y = x @ w: input x [rows, K] float32, `w` [K, N] an initializer named "w", the node
    named "mm"."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def external_matmul_artifact(folder: Path):
    """g.onnx (x [2,3] @ w [3,4], opset 18) in `folder` with its weight in g.onnx.data, as an
    Artifact listing both files' hashes: (artifact, w)."""
    import onnx

    from scredge.artifact import sha256_file
    from scredge.runtime.loaders import Artifact

    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    onnx.save_model(matmul_model(w, rows=2, opset=18), str(folder / "g.onnx"),
                    save_as_external_data=True, all_tensors_to_one_file=True,
                    location="g.onnx.data", size_threshold=0)
    files = {n: {"sha256": sha256_file(folder / n), "bytes": (folder / n).stat().st_size}
             for n in ("g.onnx", "g.onnx.data")}
    return Artifact(folder, None, {}, {"files": files}), w


def copy_model(proto):
    """A copy of an onnx ModelProto (the quantizers edit theirs in place)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def export_graph_stand_in(proto):
    """A stand-in for `pipeline.export_graph` that returns a copy of `proto` (the session's
    float graph of the same model) instead of tracing the model again."""
    return lambda _model, _opset: copy_model(proto)
