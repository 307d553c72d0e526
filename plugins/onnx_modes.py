"""The two ways TensorRT may run an scredge graph's `scr.Realign` nodes (SCR_SPEC section 2).

An exported graph carries both a `Realign` node per SCR layer and a model-local function of
the same name. TensorRT parsers disagree on which one wins (<= 10.6 the function always,
10.7-10.14 a registered plugin, >= 10.15 the plugin only with a flag or `plugin_namespace`),
so the engine builder never leaves it to them:

- `for_plugin`: drop the function, so every parser version imports each node as the
  `Realign` plugin (it must be registered, or parsing fails naming the op);
- `decomposed`: inline the function, so no `Realign` node is left and no plugin is needed;
- `check_plain`: a plain transformer's graph (`scr_layers = []`) has no `Realign` node and
  needs neither: it goes to the parser as it is.

Both return copies; the input model is not changed.
"""

from __future__ import annotations

from scredge.contract import DOMAIN, OP_TYPE, PLUGIN_ATTRS
from scredge.deps import require
from scredge.errors import ScredgeError

_REEXPORT = "re-export the model with `scredge export` (it writes the nodes and the function)"


def for_plugin(model):
    """A copy of `model` without local functions: each `scr.Realign` node becomes the plugin.

    The `scr` opset import stays (the nodes still belong to that domain).
    """
    onnx = require("onnx")
    for node in _realign_nodes(model):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        got = {k: _text(attrs.get(k)) for k in PLUGIN_ATTRS}
        if got != PLUGIN_ATTRS:
            raise ScredgeError(
                f"Realign node '{node.name}' does not name the TensorRT plugin",
                received=got, expected=PLUGIN_ATTRS, fix=_REEXPORT)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.functions[:]
    return out


def decomposed(model):
    """A copy of `model` with its local functions inlined: standard ONNX ops only."""
    _realign_nodes(model)
    if not any((f.domain, f.name) == (DOMAIN, OP_TYPE) for f in model.functions):
        raise ScredgeError(
            "the graph has scr.Realign nodes but not the scr.Realign function, so it cannot "
            "run without the plugin",
            received=f"local functions: {[f'{f.domain}.{f.name}' for f in model.functions]}",
            expected="a model-local function scr.Realign", fix=_REEXPORT)
    out = require("onnx.inliner").inline_local_functions(model)
    left = [n.name for n in out.graph.node if (n.domain, n.op_type) == (DOMAIN, OP_TYPE)]
    assert not left, f"inlining left Realign nodes: {left}"
    return out


def check_plain(model) -> None:
    """Refuse unless `model` is an ONNX model without `scr.Realign` nodes (a plain
    transformer's graph, which TensorRT parses as it is)."""
    onnx = require("onnx")
    if not isinstance(model, onnx.ModelProto):
        raise ScredgeError("expected an ONNX model", received=type(model).__name__,
                           expected="onnx.ModelProto (onnx.load('model.onnx'))")
    found = sum((n.domain, n.op_type) == (DOMAIN, OP_TYPE) for n in model.graph.node)
    if found:
        raise ScredgeError("the graph has scr.Realign nodes but its config has no SCR layers",
                           received=f"{found} Realign nodes", expected="none (scr_layers = [])",
                           fix=_REEXPORT)


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _realign_nodes(model) -> list:
    """The graph's `scr.Realign` nodes; raise unless this looks like an scredge SCR graph."""
    onnx = require("onnx")
    if not isinstance(model, onnx.ModelProto):
        raise ScredgeError("expected an ONNX model", received=type(model).__name__,
                           expected="onnx.ModelProto (onnx.load('model.onnx'))")
    nodes = [n for n in model.graph.node if (n.domain, n.op_type) == (DOMAIN, OP_TYPE)]
    if not nodes:
        raise ScredgeError(
            "the graph has no scr.Realign node: not an scredge SCR graph",
            received=f"{len(model.graph.node)} nodes, domains "
                     f"{sorted({n.domain or 'ai.onnx' for n in model.graph.node})}",
            expected="one scr.Realign node per SCR layer",
            fix="export with `scredge export`; a plain transformer (scr_layers = []) needs "
                "neither mode: hand it to the parser as it is")
    return nodes
