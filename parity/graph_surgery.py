"""Graph surgery for parity, torch-free (needs `onnx`): expose the hidden state after every
layer as extra outputs `hidden.{l}`, and cut out the `scr.Realign` op alone.

The hidden state after layer l is the value layer l+1's input RMSNorm reads first (the final
norm's, after the last layer); the exporter names nodes after their modules, so it is found
by name, in whatever graph the folder holds, faults included.
"""

from __future__ import annotations

from scredge.contract import (
    BATCH,
    DOMAIN,
    OP_TYPE,
    PLUGIN_ATTRS,
    REALIGN_INPUTS,
    REALIGN_OUTPUTS,
    SEQUENCE,
    is_carry,
    is_kv,
)
from scredge.deps import require
from scredge.errors import ScredgeError


def hidden_output(layer: int) -> str:
    """The extra output `with_hidden_outputs` adds: the hidden state after `layer`."""
    return f"hidden.{layer}"


def hidden_value_names(model) -> list[str]:
    n_layers = 1 + max((int(n.name.split("/")[2].split(".")[1]) for n in model.graph.node
                        if n.name.startswith("/model/layers.")), default=-1)
    names = []
    for l in range(n_layers):
        scope = f"/model/layers.{l + 1}/input_layernorm/" if l + 1 < n_layers else "/model/norm/"
        first = next((n for n in model.graph.node if n.name.startswith(scope)), None)
        fused = next((n for n in model.graph.node if n.name.startswith(scope)
                      and n.op_type == "SkipSimplifiedLayerNormalization"), None)
        if fused is not None:  # the onnxruntime form: the residual sum is its 4th output
            names.append(fused.output[3])
            continue
        if first is None:
            raise ScredgeError("cannot find the layer outputs in this graph",
                               received=f"no node named {scope}*",
                               expected="a graph exported by scredge (readable node names)",
                               fix="re-export the artifact with this scredge version")
        names.append(first.input[0])
    return names


def with_hidden_outputs(graph: bytes) -> bytes:
    """model.onnx (its verified bytes: runtime.loaders.verified_graph; external data stays
    a reference, handed to onnxruntime from memory) with outputs hidden.0 .. hidden.{L-1}
    ([B,T,D], model dtype) appended."""
    onnx = require("onnx")
    model = onnx.load_from_string(graph)
    elem = next(i.type.tensor_type.elem_type for i in model.graph.input if is_kv(i.name))
    for l, value in enumerate(hidden_value_names(model)):
        model.graph.node.append(onnx.helper.make_node(
            "Identity", [value], [hidden_output(l)], name=f"/parity/{hidden_output(l)}"))
        model.graph.output.append(onnx.helper.make_tensor_value_info(
            hidden_output(l), elem, [BATCH, SEQUENCE, None]))
    return model.SerializeToString()


def realign_alone(graph: bytes, kappa: float) -> bytes:
    """A one-node model: the artifact's own `scr.Realign` function (from model.onnx's
    verified bytes) applied to fresh inputs."""
    onnx = require("onnx")
    from onnx import TensorProto, helper

    model = onnx.load_from_string(graph)
    if not model.functions:
        raise ScredgeError("the graph carries no scr.Realign function",
                           received="model.onnx without functions", fix="re-export the artifact")
    elem = next(i.type.tensor_type.elem_type for i in model.graph.input if is_kv(i.name))
    f32 = TensorProto.FLOAT
    D = next(d.dim_value for i in model.graph.input if is_carry(i.name)
             for d in i.type.tensor_type.shape.dim[1:2])  # [B,D] carry: the width
    bt, b = [BATCH, SEQUENCE, D], [BATCH]
    # REALIGN_INPUTS / REALIGN_OUTPUTS order: h, m_prev, num, den, w_r, b_r, w_g, b_g
    in_types = ((elem, bt), (elem, bt), (f32, b + [D]), (f32, b + [1]),
                (f32, [D]), (f32, [1]), (f32, [D]), (f32, [1]))
    out_types = ((elem, bt), (f32, b + [D]), (f32, b + [1]))
    ins = [helper.make_tensor_value_info(n, t, s)
           for n, (t, s) in zip(REALIGN_INPUTS, in_types, strict=True)]
    outs = [helper.make_tensor_value_info(n, t, s)
            for n, (t, s) in zip(REALIGN_OUTPUTS, out_types, strict=True)]
    node = helper.make_node(OP_TYPE, [i.name for i in ins], [o.name for o in outs],
                            domain=DOMAIN, kappa=kappa, **PLUGIN_ATTRS)
    graph = helper.make_graph([node], "realign_alone", ins, outs)
    single = helper.make_model(graph, opset_imports=list(model.opset_import),
                               functions=list(model.functions))
    single.ir_version = model.ir_version
    return single.SerializeToString()
