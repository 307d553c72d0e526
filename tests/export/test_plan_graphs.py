"""export/plan_graphs.py: float zero points folded out of MatMulNBits. Oracle: NumPy's
matmul with the grid's own dequantized weights (qgrid.dequantize)."""

from __future__ import annotations

import numpy as np
import pytest

from scredge.export import plan_graphs
from scredge.export.qgrid import Grid, dequantize, rtn

BLOCK = 32


def _run(nodes, inits, k: int, n: int, x: np.ndarray) -> np.ndarray:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    h = onnx.helper
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                            [*x.shape[:2], k])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT,
                                               [*x.shape[:2], n])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21),
                                       h.make_opsetid("com.microsoft", 1)])
    return ort.InferenceSession(m.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("k", [576, 1536])
def test_float_zero_points_fold_into_a_block_sum_correction(k):
    """(q - z) * s = (q - 8) * s + (8 - z) * s: the MatMulNBits written for the float-zero-
    point grid takes no zero points (onnxruntime's fast kernel), and
    the graph equals the dequantized weights' matmul (the node computes in float32,
    accuracy level 0, so only rounding separates them)."""
    onnx = pytest.importorskip("onnx")
    rng = np.random.default_rng(0)
    n = 48
    w = rng.standard_normal((n, k)).astype(np.float32)
    q, s, z = rtn(w, Grid(4, "asym_float"), BLOCK)
    mm = onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="/m/MatMul")
    nodes, inits = plan_graphs._nbits_node(mm, Grid(4, "asym_float"), q, s, z, BLOCK)
    nbits = [nd for nd in nodes if nd.op_type == "MatMulNBits"]
    assert len(nbits) == 1 and len(nbits[0].input) == 3
    assert {a.name: a.i for a in nbits[0].attribute}["accuracy_level"] == 0
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    expected = x.astype(np.float64) @ dequantize(q, s, z, BLOCK).T.astype(np.float64)
    got = _run(nodes, inits, k, n, x)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max() * np.sqrt(k)


def test_int8_activations_on_folded_float_zero_points():
    """--activations int8 on the float-zero-point grid: the same folded nodes at level 4
    (onnxruntime quantizes each block of activations to int8). Oracle: the dequantized
    weights' matmul, within the error of rounding the activations to 8 bits (each block's
    max / 127 / 2 per element, summed over K with the weights' magnitudes)."""
    onnx = pytest.importorskip("onnx")
    from scredge.export.quantize import QuantSpec

    rng = np.random.default_rng(1)
    n, k = 48, 576
    w = rng.standard_normal((n, k)).astype(np.float32)
    q, s, z = rtn(w, Grid(4, "asym_float"), BLOCK)
    mm = onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="/m/MatMul")
    level = QuantSpec(4, activations="int8").accuracy_level
    nodes, inits = plan_graphs._nbits_node(mm, Grid(4, "asym_float"), q, s, z, BLOCK,
                                           level=level)
    nbits = [nd for nd in nodes if nd.op_type == "MatMulNBits"]
    assert {a.name: a.i for a in nbits[0].attribute}["accuracy_level"] == 4
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    wq = dequantize(q, s, z, BLOCK).astype(np.float64)
    expected = x.astype(np.float64) @ wq.T
    step = np.abs(x).reshape(2, 3, k // BLOCK, BLOCK).max(-1) / 127
    bound = (np.repeat(step, BLOCK, -1) / 2) @ np.abs(wq).T
    got = _run(nodes, inits, k, n, x)
    assert np.all(np.abs(got - expected) <= bound + 1e-4)
    assert np.abs(got - expected).max() > 0  # int8 activations really were used
