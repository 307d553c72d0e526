"""The model shapes the stamped graph (export/stamp.py) is held to, and the fingerprint that
compares two graphs node for node; shared by the concat and shared-form stamp tests."""

from __future__ import annotations

import hashlib
from collections import Counter

import onnx
from onnx import numpy_helper

# tiny preset at five layers: SCR on every layer (tied), a plain untied model, and Qwen2
# biases with a window and SCR on the first and last layers only (a four-layer trace)
CASES = {
    "scr-all": dict(scr_layers=(0, 1, 2, 3, 4), tie_embeddings=True),
    "plain-untied": dict(scr_layers=(), tie_embeddings=False),
    "scr-ends-qwen2-window": dict(scr_layers=(0, 4), attention_bias=True, window=16),
}


def canonical(proto) -> tuple[Counter, list, list]:
    """(multiset of node fingerprints, graph-output fingerprints, sorted node names): a
    fingerprint names a node's op, attributes and, recursively, what feeds it."""
    fp = {v.name: ("in", v.name) for v in proto.graph.input}
    for t in proto.graph.initializer:
        a = numpy_helper.to_array(t)
        fp[t.name] = ("init", a.dtype.str, a.shape, hashlib.sha1(a.tobytes()).hexdigest())
    fp[""] = ("none",)
    nodes = Counter()
    for n in proto.graph.node:
        attrs = tuple(sorted((a.name, str(onnx.helper.get_attribute_value(a)))
                             for a in n.attribute))
        key = hashlib.sha1(repr((n.op_type, n.domain, attrs, n.name,
                                 [fp[i] for i in n.input])).encode()).hexdigest()
        nodes[key] += 1
        for k, o in enumerate(n.output):
            fp[o] = (key, k)
    return nodes, [fp[o.name] for o in proto.graph.output], sorted(n.name for n in proto.graph.node)
