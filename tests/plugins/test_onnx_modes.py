"""The two TensorRT modes of an SCR graph: plugin (function dropped) and decomposed (function
inlined). Oracles: SCR_SPEC section 2 (node, attributes, function) and onnxruntime, which
must give the same outputs for the decomposed copy as for the original."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from scredge.contract import REALIGN_INPUTS, REALIGN_OUTPUTS
from scredge.errors import ScredgeError
from scredge.export.realign_onnx import realign_function
from scredge.plugins.onnx_modes import decomposed, for_plugin

D = 8


def _model(with_function: bool = True, **attrs) -> onnx.ModelProto:
    """One scr.Realign node (kappa 3.0) over float32 inputs, as the exporter writes it."""
    attrs = {"kappa": 3.0, "plugin_namespace": "scr", "plugin_version": "1", **attrs}
    shapes = {"h": ["B", "T", D], "m_prev": ["B", "T", D], "num_in": ["B", D],
              "den_in": ["B", 1], "w_r": [D], "b_r": [1], "w_g": [D], "b_g": [1]}
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes[n])
              for n in REALIGN_INPUTS]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in REALIGN_OUTPUTS]
    node = helper.make_node("Realign", list(REALIGN_INPUTS), list(REALIGN_OUTPUTS),
                            name="/model/scr/Realign",
                            domain="scr", **{k: v for k, v in attrs.items() if v is not None})
    model = helper.make_model(
        helper.make_graph([node], "realign", inputs, outputs),
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("scr", 1)],
        functions=[realign_function(18)] if with_function else [])
    return model


def test_for_plugin_drops_the_function_only():
    """Oracle: the parser sees the node as the plugin only when no local function exists."""
    model = _model()
    out = for_plugin(model)
    assert len(out.functions) == 0 and len(model.functions) == 1  # a copy; input untouched
    assert [(n.domain, n.op_type) for n in out.graph.node] == [("scr", "Realign")]
    assert ("scr", 1) in {(o.domain, o.version) for o in out.opset_import}


def test_decomposed_matches_the_function_in_onnxruntime():
    """Oracle: onnxruntime running the original (function) and the inlined copy."""
    ort = pytest.importorskip("onnxruntime")
    model = _model()
    out = decomposed(model)
    assert all(n.domain == "" for n in out.graph.node) and len(out.functions) == 0
    rng = np.random.default_rng(0)
    feed = {"h": rng.normal(size=(2, 5, D)), "m_prev": rng.normal(size=(2, 5, D)),
            "num_in": rng.normal(size=(2, D)), "den_in": rng.uniform(0.5, 2, size=(2, 1)),
            "w_r": rng.normal(size=D), "b_r": rng.normal(size=1), "w_g": rng.normal(size=D),
            "b_g": rng.normal(size=1)}
    feed = {k: v.astype(np.float32) for k, v in feed.items()}
    runs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            .run(None, feed) for m in (model, out)]
    for want, got in zip(*runs):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_graph_without_realign_is_refused():
    """Oracle: SCR_SPEC section 2 (an SCR graph has one Realign node per SCR layer)."""
    model = _model()
    model.graph.node[0].op_type = "Identity"
    for mode in (for_plugin, decomposed):
        with pytest.raises(ScredgeError, match="no scr.Realign node"):
            mode(model)
    with pytest.raises(ScredgeError, match="expected an ONNX model"):
        for_plugin(b"not a model")


def test_decomposed_needs_the_function():
    """Oracle: without the function the node can only run as the plugin."""
    with pytest.raises(ScredgeError, match="not the scr.Realign function"):
        decomposed(_model(with_function=False))


@pytest.mark.parametrize("attrs", [{"plugin_namespace": None}, {"plugin_version": "2"}])
def test_for_plugin_needs_the_plugin_attributes(attrs):
    """Oracle: SCR_SPEC section 2 (plugin_namespace "scr", plugin_version "1" on every node)."""
    with pytest.raises(ScredgeError, match="does not name the TensorRT plugin"):
        for_plugin(_model(**attrs))


def test_check_plain():
    """Oracle: SCR_SPEC section 1 (scr_layers = [] is a plain transformer: no Realign node,
    so the graph goes to the parser as it is); a graph with Realign nodes is not plain."""
    from scredge.plugins.onnx_modes import check_plain

    model = _model()
    with pytest.raises(ScredgeError, match="has scr.Realign nodes"):
        check_plain(model)
    model.graph.node[0].op_type = "Identity"
    check_plain(model)
    with pytest.raises(ScredgeError, match="expected an ONNX model"):
        check_plain(b"not a model")
