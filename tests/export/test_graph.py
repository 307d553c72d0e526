"""Structure of the exported graph (SCR_SPEC sections 2-3). Oracle: the spec's names,
attributes and dims, and onnx.checker with full_check on the saved file."""

from __future__ import annotations

import onnx
import pytest

from scredge.config import SCRConfig
from scredge.contract import GraphIO
from scredge.export.graph import export_graph
from scredge.ref import build_model

CFG = SCRConfig(vocab_size=256, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=64,
                window=6, scr_layers=(0, 2), kappa=5.0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("graph") / "model.onnx"
    onnx.save(export_graph(build_model(CFG, seed=1)), str(path))
    return onnx.load(str(path))


def test_realign_nodes_and_function(saved):
    nodes = [n for n in saved.graph.node if n.domain == "scr"]
    assert [n.op_type for n in nodes] == ["Realign", "Realign"]
    assert [n.name for n in nodes] == ["/model/layers.0/scr/Realign", "/model/layers.2/scr/Realign"]
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs == {"kappa": pytest.approx(5.0), "plugin_namespace": b"scr",
                         "plugin_version": b"1"}
        assert len(n.input) == 8 and len(n.output) == 3
    (fn,) = saved.functions
    assert (fn.domain, fn.name) == ("scr", "Realign")
    assert list(fn.input) == ["h", "m_prev", "num_in", "den_in", "w_r", "b_r", "w_g", "b_g"]
    assert {op.domain for op in fn.node} == {""}, "the function must use standard ops only"
    assert ("scr", 1) in {(o.domain, o.version) for o in saved.opset_import}
    assert ("", 18) in {(o.domain, o.version) for o in saved.opset_import}


def test_full_check_passes_on_the_saved_file(saved, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(saved, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def test_io_names_and_dynamic_dims(saved):
    io = GraphIO.for_config(CFG)
    assert [i.name for i in saved.graph.input] == list(io.inputs)
    assert [o.name for o in saved.graph.output] == list(io.outputs)
    assert io.inputs[2] == "attention_mask"
    assert io.inputs[3:7] == ("past_key_values.0.key", "past_key_values.0.value",
                              "past_key_values.1.key", "past_key_values.1.value")
    assert io.inputs[-4:] == ("scr_past.0.num", "scr_past.0.den", "scr_past.2.num",
                              "scr_past.2.den")
    assert io.outputs[-1] == "scr_present.2.den"

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    by_name = {v.name: v for v in list(saved.graph.input) + list(saved.graph.output)}
    assert dims(by_name["input_ids"]) == ["batch", "sequence"]
    assert dims(by_name["attention_mask"]) == ["batch", "past_sequence + sequence"]
    assert dims(by_name["past_key_values.1.value"]) == ["batch", 2, "past_sequence", 8]
    assert dims(by_name["present.2.key"]) == ["batch", 2, "present_sequence", 8]
    assert dims(by_name["scr_past.0.num"]) == ["batch", 32]
    assert dims(by_name["logits"]) == ["batch", "sequence", 256]
    elem = {v.name: v.type.tensor_type.elem_type for v in by_name.values()}
    assert elem["logits"] == elem["scr_present.0.num"] == onnx.TensorProto.FLOAT
    assert elem["input_ids"] == elem["attention_mask"] == onnx.TensorProto.INT64


def test_readable_node_names(saved):
    names = {n.name for n in saved.graph.node}
    assert len(names) == len(saved.graph.node), "node names must be unique"
    for expected in ("/model/layers.0/attn/q_proj/MatMul", "/model/layers.1/mlp/down_proj/MatMul",
                     "/model/layers.2/input_layernorm/ReduceMean", "/model/embed_tokens/Gather"):
        assert expected in names
