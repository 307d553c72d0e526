"""`scredge build` reads the graph it builds from through the manifest (issue 30 class
6). Oracle: onnx.load with its external data from the untouched file gives the same
initializers as `verified_onnx`; after the data file on disk is changed, verified_onnx
still holds what the manifest verified (or, with the change before the read, refuses)."""

from __future__ import annotations

import numpy as np
import pytest

from scredge.artifact import sha256_file
from scredge.builder.trt_build import verified_onnx
from scredge.errors import ScredgeError
from scredge.runtime.loaders import Artifact

onnx = pytest.importorskip("onnx")


def _external_graph(folder):
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(w, "W")])
    onnx.save_model(helper.make_model(graph), str(folder / "g.onnx"),
                    save_as_external_data=True, all_tensors_to_one_file=True,
                    location="g.onnx.data", size_threshold=0)
    files = {n: {"sha256": sha256_file(folder / n), "bytes": (folder / n).stat().st_size}
             for n in ("g.onnx", "g.onnx.data")}
    return Artifact(folder, None, {}, {"files": files}), w


def test_verified_onnx_equals_onnx_load(tmp_path):
    from onnx import numpy_helper

    artifact, w = _external_graph(tmp_path)
    model = verified_onnx(artifact, "g.onnx")
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), w)
    reference = onnx.load(str(tmp_path / "g.onnx"))
    np.testing.assert_array_equal(numpy_helper.to_array(reference.graph.initializer[0]), w)


def test_external_data_changed_before_the_read_is_refused(tmp_path):
    artifact, _ = _external_graph(tmp_path)
    path = tmp_path / "g.onnx.data"
    path.write_bytes(b"\1" * path.stat().st_size)
    with pytest.raises(ScredgeError, match="changed after the folder was opened"):
        verified_onnx(artifact, "g.onnx")
