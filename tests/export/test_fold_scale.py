"""Folding each SCR layer's gamma into its projection. Oracle: onnxruntime running the
graph before and after the fold (same outputs within float rounding), on a hand-built graph
with the exporter's node names: two SCR layers sharing one scale and one bias initializer,
as the exporter's deduplication leaves them."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from scredge.export.fold_scale import fold_scr_scale

D = 8


def _graph(dtype=np.float32) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    inits = [numpy_helper.from_array(a.astype(dtype), n) for n, a in (
        ("w0", rng.normal(size=(D, D))), ("w1", rng.normal(size=(D, D))),
        ("bias", rng.normal(size=D)), ("scale", rng.normal(size=D)))]
    nodes, x = [], "x"
    for i, w in enumerate(("w0", "w1")):
        p = f"/model/layers.{i}/scr"
        nodes += [
            helper.make_node("MatMul", [x, w], [f"mm{i}"], name=f"{p}/proj/MatMul"),
            helper.make_node("Add", [f"mm{i}", "bias"], [f"lin{i}"], name=f"{p}/proj/Add"),
            helper.make_node("Mul", ["scale", f"lin{i}"], [f"scaled{i}"], name=f"{p}/Mul"),
            helper.make_node("Add", [x, f"scaled{i}"], [f"x{i}"], name=f"{p}/Add"),
        ]
        x = f"x{i}"
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", elem, ["B", "T", D])],
        [helper.make_tensor_value_info(x, elem, ["B", "T", D])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_fold_removes_one_node_per_layer_and_keeps_the_outputs():
    model = _graph()
    x = np.random.default_rng(1).normal(size=(2, 3, D)).astype(np.float32)
    want = _run(model, x)
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_scr_scale(folded) == 2
    onnx.checker.check_model(folded, full_check=True)
    assert [n.op_type for n in folded.graph.node] == ["MatMul", "Add", "Add"] * 2
    assert {t.name for t in folded.graph.initializer} == {
        f"m.model.layers.{i}.scr.proj.{k}" for i in (0, 1)
        for k in ("weight_t_x_scale", "bias_x_scale")}  # the shared originals are gone
    np.testing.assert_allclose(_run(folded, x), want, rtol=1e-5, atol=1e-5)


def test_float16_products_are_taken_in_float32():
    model = _graph(np.float16)
    x = np.random.default_rng(2).normal(size=(1, 4, D)).astype(np.float16)
    want = _run(model, x).astype(np.float32)
    assert fold_scr_scale(model) == 2
    got = _run(model, x).astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3 * max(1.0, np.abs(want).max()))


def test_other_patterns_are_left_alone():
    model = _graph()
    model.graph.node[1].op_type = "Sub"  # not Add(MatMul, bias): no fold for layer 0
    before = [n.name for n in model.graph.node]
    assert fold_scr_scale(model) == 1
    after = [n.name for n in model.graph.node]
    assert "/model/layers.0/scr/Mul" in after and "/model/layers.1/scr/Mul" not in after
    assert len(after) == len(before) - 1
