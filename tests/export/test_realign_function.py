"""The `scr.Realign` function (the decomposition onnxruntime runs) at the op tier. Oracle:
the float64 NumPy loop of tests/oracles.py, written from the text of SCR_SPEC section 2;
tolerances are the op tier (max abs error <= 1e-5 x scale float32, 2e-3 x scale float16)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from oracles import random_inputs, realign_spec_f64, run_in_chunks
from scredge.contract import REALIGN_INPUTS as INPUTS
from scredge.contract import REALIGN_OUTPUTS as OUTPUTS
from scredge.export.realign_onnx import realign_function

WEIGHTS = ("w_r", "b_r", "w_g", "b_g")


def _model(arrays, kappa, opset=18, x_type=TensorProto.FLOAT, weights_as_inputs=False):
    """One scr.Realign node as the exporter writes it; weights are initializers (so
    onnxruntime folds the weight-only part, as in an artifact) unless asked otherwise."""
    D = arrays[0].shape[-1]
    shapes = {"h": ["B", "T", D], "m_prev": ["B", "T", D], "num_in": ["B", D],
              "den_in": ["B", 1], "w_r": [D], "b_r": [1], "w_g": [D], "b_g": [1]}
    types = {"h": x_type, "m_prev": x_type}
    fed = [n for n in INPUTS if weights_as_inputs or n not in WEIGHTS]
    inputs = [helper.make_tensor_value_info(n, types.get(n, TensorProto.FLOAT), shapes[n])
              for n in fed]
    inits = [] if weights_as_inputs else [
        numpy_helper.from_array(a, n) for n, a in zip(INPUTS, arrays) if n in WEIGHTS]
    outputs = [helper.make_tensor_value_info("m", x_type, ["B", "T", D]),
               helper.make_tensor_value_info("num_out", TensorProto.FLOAT, ["B", D]),
               helper.make_tensor_value_info("den_out", TensorProto.FLOAT, ["B", 1])]
    node = helper.make_node("Realign", list(INPUTS), list(OUTPUTS), domain="scr", kappa=kappa,
                            plugin_namespace="scr", plugin_version="1")
    model = helper.make_model(
        helper.make_graph([node], "realign", inputs, outputs, initializer=inits),
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("scr", 1)],
        functions=[realign_function(opset)])
    onnx.checker.check_model(model, full_check=True)
    return model, fed


def _run(arrays, kappa, x_dtype=np.float32, **kw):
    x_type = TensorProto.FLOAT16 if x_dtype == np.float16 else TensorProto.FLOAT
    model, fed = _model(arrays, kappa, x_type=x_type, **kw)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    feed = dict(zip(INPUTS, arrays))
    feed["h"], feed["m_prev"] = feed["h"].astype(x_dtype), feed["m_prev"].astype(x_dtype)
    return session.run(None, {n: feed[n] for n in fed})


def _check(arrays, got, tol):
    m, num, den = got
    m_ref, num_ref, den_ref = realign_spec_f64(*arrays[:8], kappa=arrays[8])
    scale = max(1.0, np.abs(arrays[0]).max(), np.abs(arrays[1]).max())
    assert np.isfinite(m).all() and np.isfinite(num).all() and np.isfinite(den).all()
    assert num.shape == num_ref.shape and den.shape == den_ref.shape
    np.testing.assert_allclose(m.astype(np.float64), m_ref, atol=tol * scale, rtol=0)
    np.testing.assert_allclose(den, den_ref, rtol=1e-5, atol=0)
    np.testing.assert_allclose(num, num_ref, rtol=1e-5, atol=1e-5 * np.abs(num_ref).max())


@pytest.mark.parametrize(("B", "T", "D", "kappa", "carry"), [
    (1, 1, 128, 8.0, True), (3, 1, 16, 8.0, False), (2, 37, 16, 3.0, True),
    (1, 4096, 64, 8.0, True)])
def test_float32_op_tier(B, T, D, kappa, carry):
    """Decode (T = 1), a chunk and a T = 4096 prefill, with and without a carry."""
    arrays = random_inputs(np.random.default_rng(T + B), B, T, D, carry=carry)
    _check([*arrays, kappa], _run(arrays, kappa), 1e-5)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the oracle's sigmoid
def test_float32_large_values_saturating_scores():
    """|h| up to 6e4 with weights that saturate both scores, T = 4096: finite, op tier."""
    rng = np.random.default_rng(11)
    arrays = random_inputs(rng, 2, 4096, 32, h_scale=2e4, carry=True)
    arrays[0] = np.clip(arrays[0], -6e4, 6e4).astype(np.float32)
    arrays[0][0, 5] = 6e4
    arrays[4] *= 50
    arrays[6] *= 50
    _check([*arrays, 8.0], _run(arrays, 8.0), 1e-5)


def test_float16_op_tier():
    """float16 h and m_prev: m in float16 within 2e-3 x scale, carries in float32."""
    arrays = random_inputs(np.random.default_rng(3), 2, 200, 32)
    arrays[0] = arrays[0].astype(np.float16).astype(np.float32)  # what the fp16 op sees
    arrays[1] = arrays[1].astype(np.float16).astype(np.float32)
    m, num, den = _run(arrays, 8.0, x_dtype=np.float16)
    assert m.dtype == np.float16 and num.dtype == np.float32 and den.dtype == np.float32
    _check([*arrays, 8.0], [m, num, den], 2e-3)


def test_weights_as_graph_inputs_and_opset17():
    """Without constant folding (weights fed at run time), and at the lowest opset."""
    arrays = random_inputs(np.random.default_rng(4), 2, 9, 8)
    _check([*arrays, 5.0], _run(arrays, 5.0, weights_as_inputs=True), 1e-5)
    model, _ = _model(arrays, 5.0, opset=17)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]
                               ).run(None, {n: a for n, a in zip(INPUTS[:4], arrays)})
    _check([*arrays, 5.0], got, 1e-5)


def test_chunked_calls_thread_the_carry():
    """SCR_SPEC's chunking invariant through the function: 1 + 6 + 1 tokens = 8 at once."""
    arrays = random_inputs(np.random.default_rng(8), 2, 8, 16, carry=False)
    whole = _run(arrays, 8.0)
    m, num, den = run_in_chunks(lambda a: _run(a, 8.0), arrays, (1, 6, 1))
    np.testing.assert_allclose(m, whole[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(num, whole[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(den, whole[2], rtol=1e-5, atol=0)


def test_lean_after_onnxruntime_optimisation(tmp_path):
    """Oracle: onnxruntime's own optimised graph of a float32 node whose m feeds another
    node (as in a decoder graph, where it feeds the proj). What runs per call is at most 19
    nodes (the old body ran 25) and none is a Cast or a Constant: the casts are identities
    for float32 and every weight-only expression is folded at load."""
    arrays = random_inputs(np.random.default_rng(1), 1, 1, 16)
    model, fed = _model(arrays, 8.0)
    graph = model.graph
    graph.node.append(helper.make_node("Add", ["m", "m"], ["y"]))
    graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node
           if list(n.output) != ["y"]]
    assert len(ops) <= 19, ops
    assert not {"Cast", "CastLike", "Constant", "Concat"} & set(ops), ops
