"""Matching and rewriting subgraphs of an ONNX graph (the onnxruntime-form fusions).

A pass matches patterns on a `Graph` view, names the nodes each match replaces, and hands
`rewrite` the replacements: the graph is rebuilt in topological order and whatever no node
reads any more (shape arithmetic of the old subgraphs, dead constants) is dropped."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from scredge.deps import require


class Graph:
    """Producers, consumers and constant values of one graph, for pattern matching."""

    def __init__(self, graph, read=None) -> None:
        self.graph = graph
        # a constant's value: numpy_helper.to_array, or export/quant_store.FloatSource.read
        # for a graph whose weights stay in a data file
        self._read = read
        self.nodes = list(graph.node)  # one Python object per node: identities below hold
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                self.consumers[i].append(n)
        for o in graph.output:
            self.consumers[o.name].append(None)  # a graph output is a consumer
        self.inputs = {i.name for i in graph.input}
        # constant tensors as stored; turned into arrays only when a pattern reads one (the
        # weights, most of the bytes, mostly never are)
        self._tensors = {i.name: i for i in graph.initializer}
        for n in self.nodes:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self._tensors[n.output[0]] = n.attribute[0].t
        self._arrays: dict[str, np.ndarray] = {}

    def only(self, name: str, op: str):
        """The node producing `name` when it is an `op` whose output only one node reads."""
        node = self.producer.get(name)
        if node is None or node.op_type != op or len(self.consumers[name]) != 1:
            return None
        return node

    def input_from(self, node, op: str):
        """The first node feeding `node` that is an `op` only `node` reads, or None."""
        return next((m for m in (self.only(i, op) for i in node.input) if m is not None), None)

    def next(self, name: str, op: str):
        """The one node reading `name` when it is an `op`."""
        users = self.consumers[name]
        return users[0] if len(users) == 1 and users[0] is not None and (
            users[0].op_type == op) else None

    def is_const(self, name: str) -> bool:
        return name in self._tensors

    def const(self, name: str) -> np.ndarray | None:
        """The value of constant `name` (an initializer or a Constant node), else None."""
        if name not in self._arrays and name in self._tensors:
            read = self._read or require("onnx").numpy_helper.to_array
            self._arrays[name] = read(self._tensors[name])
        return self._arrays.get(name)

    def scalar(self, name: str) -> float | None:
        value = self.const(name)
        return float(value.reshape(())) if value is not None and value.size == 1 else None


def attr(node, name: str, default=None):
    helper = require("onnx").helper
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def other(node, name: str) -> str:
    """The input of a two-input node that is not `name`."""
    a, b = node.input
    return b if a == name else a


def rewrite(proto, g: Graph, replace: dict[int, list], dead: set[int], inits=(),
            extra=()) -> None:
    """Rebuild `proto`'s nodes: a node whose id is in `replace` becomes those nodes, one in
    `dead` goes, `extra` nodes are added; then topological order, new initializers, and
    nothing left unread."""
    nodes = list(extra)
    for node in g.nodes:
        if id(node) in replace:
            nodes.extend(replace[id(node)])
        elif id(node) not in dead:
            nodes.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(_toposort(nodes, proto.graph, inits))
    proto.graph.initializer.extend(inits)
    drop_unused(proto)


def _toposort(nodes: list, graph, inits) -> list:
    """`nodes` in an order where each reads only what is already made, keeping the given
    order wherever it is already valid."""
    ready = ({i.name for i in graph.input} | {i.name for i in graph.initializer}
             | {i.name for i in inits} | {""})
    waiting, out = list(nodes), []
    while waiting:
        rest = []
        for n in waiting:
            if all(i in ready for i in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(waiting):
            raise ValueError("graph rewrite left a cycle or a missing input: "
                             + ", ".join(n.name for n in rest[:5]))
        waiting = rest
    return out


def drop_unused(proto) -> None:
    """Nodes and initializers nothing reads any more."""
    graph = proto.graph
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        keep = [n for n in graph.node if any(o in used for o in n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
