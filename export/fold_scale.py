"""Fold each SCR layer's gate scale into its projection: `h + gamma * (m @ Wp^T + eps)` is
exported as MatMul -> Add(eps) -> Mul(gamma) -> Add(h); the graph keeps
MatMul(m, Wp^T * gamma) -> Add(eps * gamma) -> Add(h), one node less per SCR layer.

The products are taken once here (in float32, then cast to the graph's dtype), not at every
call. At T = 1 on onnxruntime's CPU executor a node costs a few microseconds whatever its
size, so this is worth about as much as the Mul's arithmetic at long T. The result differs
from the unfolded graph by float rounding only (checked by the export's logits tier).
"""

from __future__ import annotations

import re

from scredge.deps import require

_MUL = re.compile(r"^/model/layers\.(\d+)/scr/Mul$")


def fold_scr_scale(proto) -> int:
    """Rewrite `proto` in place; returns the number of SCR layers folded. A layer whose
    nodes do not have the exported pattern (names from `graph._rename_nodes`) is left as
    it is."""
    require("onnx")
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    inits = {t.name: t for t in graph.initializer}
    folded = 0
    for mul in [n for n in graph.node if _MUL.match(n.name)]:
        match = _pattern(mul, producer, consumers, inits)
        if match is None:
            continue
        matmul, add, scale, weight, bias = match
        layer = _MUL.match(mul.name).group(1)
        prefix = f"m.model.layers.{layer}.scr.proj"
        _add_initializer(graph, f"{prefix}.weight_t_x_scale", weight, scale)
        _add_initializer(graph, f"{prefix}.bias_x_scale", bias, scale)
        matmul.input[1] = f"{prefix}.weight_t_x_scale"
        add.input[1] = f"{prefix}.bias_x_scale"
        add.output[0] = mul.output[0]
        graph.node.remove(mul)
        folded += 1
    _drop_unused_initializers(graph)
    return folded


def _pattern(mul, producer, consumers, inits):
    """(MatMul, Add, scale, weight, bias) when `mul` is Mul(scale, Add(MatMul(m, W), bias))."""
    scale_name = next((i for i in mul.input if i in inits), None)
    other = [i for i in mul.input if i != scale_name]
    if scale_name is None or len(other) != 1 or consumers.get(other[0]) != 1:
        return None
    add = producer.get(other[0])
    if add is None or add.op_type != "Add" or not add.name.endswith("/scr/proj/Add"):
        return None
    mm_out, bias_name = add.input
    matmul = producer.get(mm_out)
    if (matmul is None or matmul.op_type != "MatMul" or bias_name not in inits
            or matmul.input[1] not in inits or consumers.get(mm_out) != 1):
        return None
    return matmul, add, inits[scale_name], inits[matmul.input[1]], inits[bias_name]


def _add_initializer(graph, name: str, tensor, scale) -> None:
    """`tensor * scale` (scale broadcast over the last axis, the output features)."""
    import numpy as np
    from onnx import numpy_helper

    values = numpy_helper.to_array(tensor)
    product = values.astype(np.float32) * numpy_helper.to_array(scale).astype(np.float32)
    graph.initializer.append(numpy_helper.from_array(product.astype(values.dtype), name))


def _drop_unused_initializers(graph) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
