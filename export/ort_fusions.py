"""onnxruntime's fused kernels in the onnxruntime form of a quantized artifact.

torch.onnx writes RMSNorm as seven elementwise nodes, the rotate-half rotary embedding as
six per tensor and attention as about twenty (reshapes, transposes, cache concats, two
matmuls, masking, softmax); onnxruntime's optimizer fuses none of these (it expects `Div`,
not `Sqrt` + `Reciprocal`, and never fuses rotary or attention at load time). At batch 1
decode every node costs a kernel call whatever its size, so a small int4 model spent more
time between kernels than in its matmuls (benchmarks/profile_quant.py: 637 nodes against
onnxruntime-genai's 89 for the same Llama). This pass rewrites those subgraphs into
kernels onnxruntime ships:

- RMSNorm -> `SimplifiedLayerNormalization` (onnxruntime's, in the ONNX domain), and with
  the residual `Add` before it -> `com.microsoft.SkipSimplifiedLayerNormalization`, which
  also hands the sum on to the next residual;
- rotate-half rotary -> `com.microsoft.RotaryEmbedding`; its cos/sin caches are the graph's
  own cos/sin rows (first half), one row per token, indexed by a running token number, so
  every position rule of the float graph (rope scaling, per-row positions) carries over;
- MatMulNBits nodes reading the same activation (q/k/v, gate/up) -> one over the stacked
  rows + `Split` (the same integers and scales);
- attention (`ort_attention.py`) -> the standard `Attention` op (opset 23: grouped KV
  heads, bool mask, past/present caches), with the graph's own visibility mask.

Only the onnxruntime form gets this (the TensorRT form stays standard ONNX); the quantized
tier at export runs on the rewritten graph, so parity is checked, not assumed, and a test
holds the rewritten graph to the unrewritten one. A subgraph that does not match exactly
is left as it was.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from scredge.config import SCRConfig
from scredge.contract import INPUT_IDS, ORT_DOMAIN
from scredge.deps import require
from scredge.export.graph_match import Graph, attr, other, rewrite

# the oldest onnxruntime that runs every kernel this pass writes: the CPU Attention-23
# kernel came in 1.23.0 and its grouped-query path was fixed after that release
MIN_ONNXRUNTIME = "1.24"


@dataclass(frozen=True)
class FusionCounts:
    rms_norm: int
    skip_norm: int
    rotary: int
    packed_matmuls: int
    attention: int

    def summary(self) -> str:
        return (f"{self.rms_norm} RMSNorm -> SimplifiedLayerNormalization ({self.skip_norm} "
                f"with their residual Add -> SkipSimplifiedLayerNormalization), "
                f"{self.rotary} rotary -> RotaryEmbedding, {self.packed_matmuls} MatMulNBits "
                f"packed by shared input, {self.attention} attention -> Attention")


def _match_rms_norm(g: Graph, mul_w):
    """`w * (x * 1/sqrt(mean(x^2) + eps))` ending at `mul_w` -> (x, w, eps, dead nodes)."""
    if mul_w.op_type != "Mul":
        return None
    for inner_name in mul_w.input:
        w = other(mul_w, inner_name)
        mul_x = g.only(inner_name, "Mul")
        if mul_x is None or not g.is_const(w) or g.const(w).ndim != 1:
            continue
        for r_name in mul_x.input:
            recip = g.only(r_name, "Reciprocal")
            sqrt = recip and g.only(recip.input[0], "Sqrt")
            add = sqrt and g.only(sqrt.input[0], "Add")
            if add is None:
                continue
            mean = g.input_from(add, "ReduceMean")
            eps = g.scalar(other(add, mean.output[0])) if mean else None
            pow_ = mean and g.only(mean.input[0], "Pow")
            x = other(mul_x, r_name)
            if pow_ is None or eps is None or pow_.input[0] != x or g.scalar(pow_.input[1]) != 2:
                continue
            axes = g.const(mean.input[1]) if len(mean.input) > 1 else attr(mean, "axes")
            if axes is None or list(np.ravel(axes)) != [-1] or not attr(mean, "keepdims", 1):
                continue
            return x, w, eps, [pow_, mean, add, sqrt, recip, mul_x, mul_w]
    return None


def _residual_add(g: Graph, x: str):
    """The Add making `x` from two activations (a residual sum), or None."""
    add = g.producer.get(x)
    if (add is None or add.op_type != "Add" or len(add.input) != 2
            or any(g.is_const(i) for i in add.input)):
        return None
    return add


def _fuse_rms_norms(g: Graph) -> tuple[list, set, int, int]:
    """Each RMSNorm -> SimplifiedLayerNormalization; one reading a residual sum ->
    SkipSimplifiedLayerNormalization, which also outputs the sum for the next residual."""
    helper = require("onnx").helper
    new, dead, skips = [], set(), 0
    for node in g.nodes:
        m = _match_rms_norm(g, node)
        if m is None or any(id(n) in dead for n in m[3]):
            continue
        x, w, eps, nodes = m
        dead.update(id(n) for n in nodes)
        add = _residual_add(g, x)
        if add is not None and id(add) not in dead:
            dead.add(id(add))
            skips += 1
            new.append((node, helper.make_node(
                "SkipSimplifiedLayerNormalization", [*add.input, w],
                [node.output[0], "", "", x], name=node.name + "/SkipSimplifiedLayerNormalization",
                domain=ORT_DOMAIN, epsilon=eps)))
            continue
        new.append((node, helper.make_node(
            "SimplifiedLayerNormalization", [x, w], [node.output[0]],
            name=node.name + "/SimplifiedLayerNormalization",
            axis=-1, epsilon=eps, stash_type=1)))
    return new, dead, len(new), skips


def _match_rotary(g: Graph, add):
    """`t * cos + cat(-t2, t1) * sin` ending at `add` -> (t, cos, sin, dead nodes); cos and
    sin are the [B, T, Dh] tensors before their head-axis Unsqueeze."""
    if add.op_type != "Add" or len(add.input) != 2:
        return None
    for a_name in add.input:
        mul_c, mul_s = g.only(a_name, "Mul"), g.only(other(add, a_name), "Mul")
        if mul_c is None or mul_s is None:
            continue
        for cat_name in mul_s.input:
            cat = g.only(cat_name, "Concat")
            if cat is None or len(cat.input) != 2 or attr(cat, "axis") not in (-1, 3):
                continue
            neg = g.only(cat.input[0], "Neg")
            split = neg and g.producer.get(neg.input[0])
            if (split is None or split.op_type != "Split" or len(split.output) != 2
                    or list(split.output) != [cat.input[1], neg.input[0]]
                    or attr(split, "axis") not in (-1, 3) or len(split.input) > 1):
                continue
            t = split.input[0]
            if t not in mul_c.input:
                continue
            unsq_c = _past_cast(g, other(mul_c, t))
            unsq_s = _past_cast(g, other(mul_s, cat_name))
            if not all(u is not None and u.op_type == "Unsqueeze" for u in (unsq_c, unsq_s)):
                continue
            if any(g.const(u.input[1]) is None or list(np.ravel(g.const(u.input[1]))) != [1]
                   for u in (unsq_c, unsq_s)):
                continue
            if len(g.consumers[t]) != 2:  # the cos Mul and the Split only
                continue
            return t, unsq_c.input[0], unsq_s.input[0], [mul_c, split, neg, cat, mul_s, add]
    return None


def _past_cast(g: Graph, name: str):
    """The node producing `name`, or, when that is a `Cast` (a float16 graph casts the
    float32 cos/sin to float16 before the rotary's Mul), the node producing its input."""
    node = g.producer.get(name)
    if node is not None and node.op_type == "Cast":
        node = g.producer.get(node.input[0])
    return node


def _rotary_dtype(g: Graph, t: str) -> int | None:
    """The element type the rotary's caches must have: the Cast's `to` on the cos path of
    a float16 graph (the `Mul` reading `t` and a Cast), None for a float32 graph."""
    for user in g.consumers[t]:
        if user is not None and user.op_type == "Mul":
            cast = g.producer.get(other(user, t))
            if cast is not None and cast.op_type == "Cast":
                return attr(cast, "to")
    return None


def _half_angles(g: Graph, cos: str, sin: str) -> str | None:
    """The angles `a` [B, T, Dh/2] when cos = Cos(cat(a, a)) and sin = Sin(cat(a, a)): the
    rotate-half layout, whose two halves RotaryEmbedding's half-width caches stand for."""
    found = set()
    for name, op in ((cos, "Cos"), (sin, "Sin")):
        node = g.producer.get(name)
        cat = node is not None and node.op_type == op and g.producer.get(node.input[0])
        if (not cat or cat.op_type != "Concat" or len(cat.input) != 2
                or cat.input[0] != cat.input[1] or attr(cat, "axis") != -1):
            return None
        found.add(cat.input[0])
    return found.pop() if len(found) == 1 else None


def _rotary_inputs(angles: str, head_dim: int, ids: str, to: int | None = None):
    """Nodes making what RotaryEmbedding reads: caches cos(a), sin(a) as [B*T, Dh/2] rows
    (cast to element type `to` when given: the activations' float16), and each token's row
    [B, T] (0 .. B*T-1)."""
    helper, numpy_helper = require("onnx").helper, require("onnx").numpy_helper
    p = "/ort_rotary/"
    consts = {p + "rows": np.array([-1, head_dim // 2], np.int64),
              p + "s0": np.array(0, np.int64), p + "s1": np.array(1, np.int64)}
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    nodes = []
    for op in ("Cos", "Sin"):
        rows = p + op + ("_rows" if to else "_cache")
        nodes += [helper.make_node(op, [angles], [p + op], name=p + op),
                  helper.make_node("Reshape", [p + op, p + "rows"], [rows],
                                   name=p + op + "/Reshape")]
        if to:
            nodes.append(helper.make_node("Cast", [rows], [p + op + "_cache"], to=to,
                                          name=p + op + "/Cast"))
    nodes += [helper.make_node("Size", [ids], [p + "count"], name=p + "Size"),
              helper.make_node("Range", [p + "s0", p + "count", p + "s1"], [p + "flat"],
                               name=p + "Range"),
              helper.make_node("Shape", [ids], [p + "ids_shape"], name=p + "Shape"),
              helper.make_node("Reshape", [p + "flat", p + "ids_shape"], [p + "rows_ids"],
                               name=p + "RowIds")]
    return nodes, inits, p + "Cos_cache", p + "Sin_cache", p + "rows_ids"


@dataclass
class _RotaryRewrite:
    new: list  # (old Add, RotaryEmbedding)
    dead: set
    cache_nodes: list  # the caches' nodes
    inits: list
    count: int


def _fuse_rotaries(g: Graph, head_dim: int, ids: str) -> _RotaryRewrite:
    helper = require("onnx").helper
    matches = [m for m in (_match_rotary(g, n) for n in g.nodes) if m is not None]
    pairs = {(m[1], m[2]) for m in matches}
    if len(pairs) != 1:  # one cos/sin pair for the whole graph, or leave it
        return _RotaryRewrite([], set(), [], [], 0)
    (cos, sin), = pairs
    angles = _half_angles(g, cos, sin)
    if angles is None:
        return _RotaryRewrite([], set(), [], [], 0)
    nodes, inits, cos_cache, sin_cache, row_ids = _rotary_inputs(
        angles, head_dim, ids, _rotary_dtype(g, matches[0][0]))
    new, dead = [], set()
    for t, _, _, sub in matches:
        dead.update(id(n) for n in sub)
        add = sub[-1]
        new.append((add, helper.make_node(
            "RotaryEmbedding", [t, row_ids, cos_cache, sin_cache], [add.output[0]],
            name=add.name + "/RotaryEmbedding", domain=ORT_DOMAIN,
            interleaved=0)))
    return _RotaryRewrite(new, dead, nodes, inits, len(new))


_PACK_ATTRS = ("K", "bits", "block_size", "accuracy_level")


def _pack_key(g: Graph, node):
    """What MatMulNBits nodes must share to be packed into one: input, K, bits, block,
    accuracy, zero-point presence; no g_idx or bias (not written by our quantizer)."""
    if node.op_type != "MatMulNBits" or len(node.input) > 4 or not all(
            g.is_const(i) for i in node.input[1:] if i):
        return None
    return (node.input[0], len(node.input), *(attr(node, a) for a in _PACK_ATTRS))


def _stack(arrays: list[np.ndarray], ns: list[int]) -> np.ndarray:
    """Per-output-row tensors ([N, ...] or flat [N * ...]) stacked along N."""
    rows = np.concatenate([a.reshape(n, -1) for a, n in zip(arrays, ns)])
    return rows.reshape((sum(ns), *arrays[0].shape[1:])) if arrays[0].ndim > 1 else rows.ravel()


def _pack_matmuls(g: Graph, hold=None) -> tuple[list, set, list, int]:
    """MatMulNBits nodes reading the same activation (q/k/v, gate/up) -> one MatMulNBits
    over the stacked rows + a Split back into the original outputs: one weight pass and
    one kernel instead of several. The packed integers and scales are the same bytes.
    `hold(array, name)`: the stacked tensors' initializers (plan_graphs.planned_graph's)."""
    helper = require("onnx").helper
    hold = hold or require("onnx").numpy_helper.from_array
    groups: dict[tuple, list] = defaultdict(list)
    for node in g.nodes:
        key = _pack_key(g, node)
        if key is not None:
            groups[key].append(node)
    new, dead, inits, packed = [], set(), [], 0
    for members in groups.values():
        if len(members) < 2:
            continue
        ns = [attr(m, "N") for m in members]
        first = members[0]
        stem = first.name + "/packed"
        names = []
        for k in range(1, len(first.input)):
            value = _stack([g.const(m.input[k]) for m in members], ns)
            names.append(f"{stem}_in{k}")
            inits.append(hold(value, names[-1]))
        attrs = {a.name: helper.get_attribute_value(a) for a in first.attribute}
        attrs["N"] = sum(ns)
        merged = helper.make_node("MatMulNBits", [first.input[0], *names], [stem + "_out"],
                                  name=stem, domain=ORT_DOMAIN, **attrs)
        split = helper.make_node("Split", [stem + "_out", stem + "_sizes"],
                                 [m.output[0] for m in members], name=stem + "/Split", axis=-1)
        inits.append(require("onnx").numpy_helper.from_array(np.array(ns, np.int64),
                                                             stem + "_sizes"))
        new.append((first, [merged, split]))
        dead.update(id(m) for m in members[1:])
        packed += len(members)
    return new, dead, inits, packed


def fuse_for_onnxruntime(proto, config: SCRConfig, read=None, hold=None) -> FusionCounts:
    """Rewrite `proto` (an onnxruntime-form graph of `config`, float32 activations, or
    float16 ones: rotary and attention match through its Casts, RMSNorm, computed in
    float32 between Casts, is left as it is) in place. The first pass's rewrites touch
    disjoint nodes; attention matches on its result (the 4-D rotary nodes it made).
    `read`: how a constant's value is read (Graph); `hold`: how a packed tensor becomes an
    initializer (_pack_matmuls)."""
    from scredge.export.ort_attention import fuse_attention

    onnx = require("onnx")
    g = Graph(proto.graph, read)
    norm_new, norm_dead, n_norm, n_skip = _fuse_rms_norms(g)
    rot = _fuse_rotaries(g, config.head_dim, INPUT_IDS)
    pack_new, pack_dead, pack_inits, n_packed = _pack_matmuls(g, hold)
    replace = {id(old): [new] for old, new in norm_new + rot.new}
    replace.update({id(old): new for old, new in pack_new})
    rewrite(proto, g, replace, norm_dead | rot.dead | pack_dead, rot.inits + pack_inits,
            extra=rot.cache_nodes)
    if (rot.count or n_skip) and not any(o.domain == ORT_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(ORT_DOMAIN, 1))
    n_attention = fuse_attention(proto, config.n_heads, config.n_kv_heads) if rot.count else 0
    return FusionCounts(n_norm, n_skip, rot.count, n_packed, n_attention)
