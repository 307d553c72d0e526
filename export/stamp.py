"""The decoder graph of a deep model, stamped out of the trace of a shallow one (issue 27).

Tracing costs time per layer and, with the weights inside the graph, memory per weight;
a 30-layer model traced whole took minutes and several copies of its weights. Every
interior layer of one kind exports to the same nodes, so this traces a model of the same
config with few layers (`trace_config`: two when all layers are of one kind, else the
first layer, two interior ones, the last one when its kind differs) and a small
vocabulary, with distinct random weights, then:

- finds each traced node's layer (its name scope; the few nodes the exporter names after
  the model, like the rotary `Split`, by the layer all their readers belong to);
- pairs the template layer 1 with a twin, layer 0 or layer 2, node by node
  (export/stamp_pair.py): an input both read under one name is shared (the rotary
  cos/sin, the mask, shape constants), one that the later layer reads from the earlier
  where the earlier read it from the layer before is the residual chain, an initializer
  they read under different names is a per-layer weight;
- copies layer 1 for every interior layer of the real model (and the last one, from a
  2-layer trace) and renames the traced last layer, graph inputs and outputs
  (`past_key_values.i.*`, `present.i.*`, SCR carries) after the real layer, then names
  the nodes as `graph._rename_nodes` does for a full trace;
- describes each weight initializer by a `Recipe` (which parameter of the real model, which
  transform: as is, transposed, SCR scale folded), found by comparing the traced graph's
  initializers with the traced model's parameters, so the weights are written later one at
  a time (export/stream_write.py) and never held in the graph.

The result is the graph a full trace gives (tests/export/test_stamp.py: node for node, and
equal logits). A model this cannot stamp is traced whole (`None` here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from scredge.config import SCRConfig
from scredge.deps import require
from scredge.export.stamp_pair import _IO, _CannotStamp, _io_rename, _Stamper, _value

TRACE_SEED = 1234
_PARAM_LAYER = re.compile(r"^(m\.)?model\.layers\.(\d+)\.")
_FOLD = re.compile(r"^m\.model\.layers\.(\d+)\.scr\.proj\.(weight_t|bias)_x_scale$")
_DEDUP_LIMIT = 1024  # onnx_ir's DeduplicateInitializersPass: tensors of at most this size


@dataclass(frozen=True)
class Recipe:
    """One weight initializer: `transform` of parameter `param` of the real model, in
    `dtype` (numpy). transform: "id", "T" (2-D transposed), "fold_w" / "fold_b" (the SCR
    projection's transposed weight / bias times its scale, export/fold_scale.py), "h" (as
    is, rounded through float16: the float32 parameters of a float16 export,
    pipeline.cast_for_export's Realign relevance and gate)."""

    param: str
    transform: str
    dtype: np.dtype

    def shape(self, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
        s = shapes[self.param]
        return tuple(reversed(s)) if self.transform in ("T", "fold_w") else tuple(s)


@dataclass
class StampedGraph:
    proto: object  # onnx.ModelProto; weight initializers carry dims and dtype, no data
    recipes: dict[str, Recipe]  # initializer name -> how to make it
    traced_layers: int  # of the trace it was stamped from (2, or 3-4 when 2 did not pair)


def trace_config(c: SCRConfig, two: bool = True) -> tuple[SCRConfig, list[int]] | None:
    """(the shallow config to trace, real layer of each traced layer; -1 = a second
    interior layer, only compared), or None when the model cannot be stamped. `two`: a
    model whose layers are all of one kind is traced with two (each traced layer costs
    ~1.5 CPU-s of the export's critical path at SmolLM2's shape)."""
    n = c.n_layers
    if n <= 3:
        return None
    kinds = [i in c.scr_layers for i in range(n)]
    if len(set(kinds[1:n - 1])) != 1:
        return None
    mid = kinds[1]
    if two and len(set(kinds)) == 1:
        layout, real = [mid, mid], [0, n - 1]
    else:
        layout = [kinds[0], mid, mid] + ([kinds[-1]] if kinds[-1] != mid else [])
        real = [0, 1, -1, n - 1] if len(layout) == 4 else [0, 1, n - 1]
    # the vocabulary and the MLP width are traced small (the weights are stamped in with
    # their real shapes; shapes of values are set back by `_real_dims`): the trace's
    # parameters and their copies in the exporter were most of the trace child's memory
    # (1.35 GB peak at Qwen2.5-0.5B's width, 0.53 GB traced narrow), beside the reference
    # pass's mapped weights. Each stands in for one real size, so it must be a size the
    # graph holds nowhere else.
    dims = {c.d_model, c.d_ff, c.head_dim, c.n_heads, c.n_kv_heads, c.n_kv_heads * c.head_dim}
    if c.window is not None:
        dims |= {c.window - 1, c.window, c.window + 1}
    vocab, d_ff = [v for v in range(1009, 4000, 2) if v not in dims][:2]
    traced = c.with_(n_layers=len(layout), vocab_size=vocab, d_ff=d_ff,
                     scr_layers=tuple(j for j, k in enumerate(layout) if k))
    return traced, real


def _trace(c: SCRConfig, dtype: str, opset: int):
    """The traced shallow model (distinct random values in every parameter, so each
    initializer can be traced back to its parameter) and its graph."""
    torch = require("torch")
    from scredge.export.graph import export_graph
    from scredge.export.pipeline import cast_for_export
    from scredge.ref.model import SCRForCausalLM

    model = SCRForCausalLM(c).eval()
    gen = torch.Generator().manual_seed(TRACE_SEED)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    # the shallow graph skips strict shape inference (0.2 s of the export's critical path):
    # the stamped graph is checked when written and run against the reference
    return model, export_graph(cast_for_export(model, dtype), opset, full_check=False)


def stamp_graph(c: SCRConfig, dtype: str, opset: int) -> StampedGraph | None:
    """The decoder graph of `c` (export dtype `dtype`) with weight recipes, or None when the
    model must be traced whole."""
    for two in (True, False):
        plan = trace_config(c, two)
        if plan is None:
            return None
        traced_c, real = plan
        model, traced = _trace(traced_c, dtype, opset)
        try:
            return _stamp(c, traced_c, real, model, traced)
        except _CannotStamp:
            # a 2-layer trace whose layers 0 and 1 do not pair is traced again with 3
            if len(real) != 2:
                return None
    return None


def _stamp(c: SCRConfig, tc: SCRConfig, real: list[int], model, traced) -> StampedGraph:
    s = _Stamper(traced, real, c.n_layers)
    found = _find_recipes(traced, model)
    s.inits_with_recipe = set(found)
    K, last = len(real), c.n_layers - 1
    recipes = _real_recipes(found, real)  # traced name -> Recipe in real names
    rename: dict[str, str] = {name: _weight_name(name, r, r.param)
                              for name, r in recipes.items() if name.startswith("m.")}
    for node in s.by_layer[K - 1]:  # the traced last layer is the real last layer
        rename.update({o: _value(_io_rename(o, last), last) if s.before else _io_rename(o, last)
                       for o in node.output})
    # (in a 2-layer trace, layer 1's inputs read outside the template keep their names:
    # a trace of any depth reads the past length off `past_key_values.1.key`)
    for v in ([] if s.before else traced.graph.input):
        m = _IO.match(v.name)
        if m and int(m.group(2)) == K - 1:
            rename[v.name] = _io_rename(v.name, last)
    # the traced layer before the last one stands for real layer N-2, a stamped one (in a
    # 2-layer trace the last layer is stamped too, and layer 0 is real layer 0)
    for node in ([] if s.before else s.by_layer[K - 2]):
        tmpl = node if K == 3 else s.pair[id(node)]
        rename.update({o: _value(_io_rename(t, last - 1), last - 1)
                       for o, t in zip(node.output, tmpl.output)})
    plans = [[s.classify(a, b, k) for k in range(len(a.input))] for a, b in s.pairs]
    weights: dict[str, Recipe] = {}
    stamped = [_stamp_node(a, plan, i, weights, found)
               for i in s.stamped for a, plan in zip(s.by_layer[1], plans)]
    nodes, placed = [], False
    for node, lay in zip(traced.graph.node, s.layer):
        if lay == 1 or (lay == 2 and K == 4):
            if not placed:
                nodes.extend(stamped)
                placed = True
            continue
        new = _copy_node(node, rename)
        if lay == K - 1:
            _retag(new, K - 1, last)
        nodes.append(new)
    final = {rename.get(k, k): r for k, r in recipes.items()} | weights
    dropped = {o for n in s.by_layer[2] for o in n.output} if K == 4 else set()
    proto = _assemble(traced, tc, c, nodes, rename, final, s, dropped)
    return StampedGraph(proto, final, len(real))


def _copy_node(node, rename: dict[str, str]):
    new = require("onnx").NodeProto()
    new.CopyFrom(node)
    new.input[:] = [rename.get(x, x) for x in new.input]
    new.output[:] = [rename.get(x, x) for x in new.output]
    return new


def _retag(node, old: int, new: int) -> None:
    """Layer `old` -> `new` in a node's name and recorded name scopes."""
    node.name = node.name.replace(f"/model/layers.{old}/", f"/model/layers.{new}/")
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            p.value = p.value.replace(f"model.layers.{old}'", f"model.layers.{new}'").replace(
                f"model.layers.{old}.", f"model.layers.{new}.")


def _stamp_node(a, plan, i: int, weights: dict, found: dict):
    new = require("onnx").NodeProto()
    new.CopyFrom(a)
    _retag(new, 1, i)
    for k, (kind, via) in enumerate(plan):
        x = a.input[k]
        if kind == "own":
            new.input[k] = _value(_io_rename(x, i), i)
        elif kind == "io":
            new.input[k] = _io_rename(x, i)
        elif kind == "chain":  # layer i reads from layer i-1 what layer 2 reads from 1
            new.input[k] = x if i == 1 else _value(_io_rename(via, i - 1), i - 1)
        elif kind == "weight":
            r = found.get(x)
            if r is None:
                raise _CannotStamp(f"no parameter found for {x}")
            param = _relayer(r.param, i)
            name = _weight_name(x, r, param)
            weights[name] = Recipe(param, r.transform, r.dtype)
            new.input[k] = name
    for k, o in enumerate(a.output):
        new.output[k] = _value(_io_rename(o, i), i)
    return new


def _relayer(param: str, layer: int) -> str:
    return _PARAM_LAYER.sub(lambda m: f"model.layers.{layer}.", param)


def _weight_name(traced_name: str, r: Recipe, param: str) -> str:
    if traced_name.startswith("m.") and r.transform in ("id", "h", "fold_w", "fold_b"):
        m = _PARAM_LAYER.match(traced_name)
        layer = _PARAM_LAYER.match(param)
        if m and layer:
            return "m." + _relayer(traced_name[2:], int(layer.group(2)))
        return traced_name
    return f"m.{param}_t" if r.transform == "T" else f"m.{param}"


def _find_recipes(traced, model) -> dict[str, Recipe]:
    """Traced initializer name -> Recipe in the traced model's parameter names."""
    numpy_helper = require("onnx").numpy_helper
    params = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    index: dict[tuple, tuple[str, str]] = {}
    for name, v in params.items():
        for dt in (np.float32, np.float16):
            cast = v.astype(dt)
            index[(dt, v.shape, cast.tobytes())] = (name, "id")
            if v.ndim == 2:
                t = np.ascontiguousarray(cast.T)
                index[(dt, t.shape, t.tobytes())] = (name, "T")
    out = {}
    for init in traced.graph.initializer:
        m = _FOLD.match(init.name)
        dt = np.dtype(require("onnx").helper.tensor_dtype_to_np_dtype(init.data_type))
        if m:
            stem = f"model.layers.{m.group(1)}.scr.proj."
            kind = "fold_w" if m.group(2) == "weight_t" else "fold_b"
            out[init.name] = Recipe(stem + ("weight" if kind == "fold_w" else "bias"), kind, dt)
            continue
        if init.name.startswith("m.") and init.name[2:] in params:
            out[init.name] = Recipe(init.name[2:], _as_is(init, params[init.name[2:]]), dt)
            continue
        if dt not in (np.float32, np.float16):
            continue
        arr = numpy_helper.to_array(init)
        hit = index.get((dt.type, arr.shape, arr.tobytes()))
        if hit is not None:
            out[init.name] = Recipe(hit[0], hit[1], dt)
    return out


def _as_is(init, param: np.ndarray) -> str:
    """"id", or "h" when the initializer holds the parameter rounded through float16 (a
    float32 parameter of a float16 export: the model was halved, then that parameter made
    float32 again)."""
    numpy_helper = require("onnx").numpy_helper
    value = numpy_helper.to_array(init)
    if value.dtype != np.float32 or np.array_equal(value, param.astype(np.float32)):
        return "id"
    rounded = param.astype(np.float16).astype(np.float32)
    return "h" if np.array_equal(value, rounded) else "id"


def _real_recipes(found: dict, real: list[int]) -> dict[str, Recipe]:
    """Recipes of the initializers outside the stamped layers, in real parameter names."""
    out = {}
    for name, r in found.items():
        m = _PARAM_LAYER.match(r.param)
        t = int(m.group(2)) if m else None
        if t is not None and (t == 1 or real[t] < 0):
            continue  # stamped (layer 1) or only compared (layer 2 of 4)
        param = r.param if t is None else _relayer(r.param, real[t])
        out[name] = Recipe(param, r.transform, r.dtype)
    return out


def _assemble(traced, tc: SCRConfig, c: SCRConfig, nodes: list, rename: dict,
              recipes: dict, s: _Stamper, dropped: set):
    """The final ModelProto: nodes in a valid order, weight initializers as dims only,
    graph I/O and value_info of the real model, nodes named as a full trace names them."""
    onnx = require("onnx")
    from scredge.export.graph import _rename_nodes
    from scredge.export.graph_match import _toposort, drop_unused

    out = onnx.ModelProto()
    out.CopyFrom(traced)
    g = out.graph
    shapes = c.parameter_shapes()
    keep = [i for i in traced.graph.initializer if i.name not in s.inits_with_recipe]
    del g.initializer[:]
    g.initializer.extend(keep)
    for name, r in recipes.items():
        t = g.initializer.add()
        t.name, t.data_type = name, onnx.helper.np_dtype_to_tensor_dtype(r.dtype)
        t.dims.extend(r.shape(shapes))
    _io(g, traced.graph, c, tc, s)
    del g.node[:]
    g.node.extend(_toposort(nodes, g, []))
    drop_unused(out)
    names = {i.name for i in g.initializer}
    for key in [k for k in recipes if k not in names]:
        del recipes[key]
    _value_info(g, traced.graph, rename, c, tc, s, dropped)
    for n in g.node:
        n.ClearField("name")  # named again, in the final order, as a full trace names them
    _rename_nodes(out)
    return out


def _io(g, tg, c: SCRConfig, tc: SCRConfig, s: _Stamper) -> None:
    """Graph inputs and outputs in GraphIO order, each typed as its traced counterpart."""
    from scredge.contract import GraphIO

    def source(name: str):
        m = _IO.match(name)
        if not m:
            return name
        i = int(m.group(2))
        t = 0 if i == 0 else len(s.real) - 1 if i == c.n_layers - 1 else 1
        return _io_rename(name, t)

    io = GraphIO.for_config(c)
    for field, names in ((g.input, io.inputs), (g.output, io.outputs)):
        traced = {v.name: v for v in (tg.input if field is g.input else tg.output)}
        del field[:]
        for name in names:
            v = field.add()
            v.CopyFrom(traced[source(name)])
            v.name = name
            _real_dims(v, tc, c)


def _value_info(g, tg, rename: dict, c: SCRConfig, tc: SCRConfig, s: _Stamper,
                dropped: set) -> None:
    """The traced graph's value_info, per stamped layer for layer 1's values, renamed for
    the others; initializers' entries made from the initializers themselves."""
    onnx = require("onnx")
    made = {o for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    traced_inits = {i.name for i in tg.initializer}
    produced_in_1 = {o for n in s.by_layer[1] for o in n.output}
    entries = []
    for v in tg.value_info:
        if v.name in traced_inits or v.name in dropped:
            continue
        names = ([_value(_io_rename(v.name, i), i) for i in s.stamped]
                 if v.name in produced_in_1 else [rename.get(v.name, v.name)])
        for name in names:
            if name in made:
                w = onnx.ValueInfoProto()
                w.CopyFrom(v)
                w.name = name
                _real_dims(w, tc, c)
                entries.append(w)
    if any(v.name in traced_inits for v in tg.value_info):
        for name, t in inits.items():
            entries.append(onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    del g.value_info[:]
    g.value_info.extend(entries)


def _real_dims(value, tc: SCRConfig, c: SCRConfig) -> None:
    """The value's shape with the traced stand-ins (vocabulary, MLP width) set to the real
    sizes."""
    real = {tc.vocab_size: c.vocab_size, tc.d_ff: c.d_ff}
    for d in value.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value in real:
            d.dim_value = real[d.dim_value]
