"""`scredge build` reads the graph it builds from through the manifest (issue 30 class
6). Oracle: onnx.load with its external data from the untouched file gives the same
initializers as `verified_onnx`; after the data file on disk is changed, verified_onnx
still holds what the manifest verified (or, with the change before the read, refuses)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_graphs import external_matmul_artifact

from scredge.builder.trt_build import verified_onnx
from scredge.errors import ScredgeError

onnx = pytest.importorskip("onnx")


def test_verified_onnx_equals_onnx_load(tmp_path):
    from onnx import numpy_helper

    artifact, w = external_matmul_artifact(tmp_path)
    model = verified_onnx(artifact, "g.onnx")
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), w)
    reference = onnx.load(str(tmp_path / "g.onnx"))
    np.testing.assert_array_equal(numpy_helper.to_array(reference.graph.initializer[0]), w)


def test_external_data_changed_before_the_read_is_refused(tmp_path):
    artifact, _ = external_matmul_artifact(tmp_path)
    path = tmp_path / "g.onnx.data"
    path.write_bytes(b"\1" * path.stat().st_size)
    with pytest.raises(ScredgeError, match="changed after the folder was opened"):
        verified_onnx(artifact, "g.onnx")
