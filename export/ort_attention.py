"""Attention blocks of the onnxruntime form -> the standard `Attention` op (opset 23).

The reference model's attention (SCR_SPEC section 3) exports as: q/k/v reshaped to heads
and transposed, rotary on q and k, the caches concatenated (`present` = past + new), q's
heads folded into grouped rows for the KV heads, scores scaled, masked with the graph's
visibility rule (causal, window, pad slots), softmax, the value matmul, and back to
[B, T, D]. `Attention` takes exactly these: q/k/v as [B, T, heads x Dh], `q_num_heads` /
`kv_num_heads`, the bool mask [B, 1, T, P+T], the caches [B, Hk, P, Dh], and returns the
output and both `present` caches (past + new) -- the same tensors, one node. Rotary moves
to the 3-D tensors (`RotaryEmbedding` with `num_heads`). The mask is the graph's own, taken
before its rows were tiled for the head groups, so the visibility rule stays where the
reference model defines it.
"""

from __future__ import annotations

from dataclasses import dataclass

from scredge.contract import ORT_DOMAIN
from scredge.deps import require
from scredge.export.graph_match import Graph, attr, other, rewrite

ATTENTION_OPSET = 23  # the standard Attention op (GQA heads, bool mask, past/present)


@dataclass(frozen=True)
class _AttentionMatch:
    q_lin: str
    k_lin: str
    v_lin: str
    past_k: str
    past_v: str
    k_all: str
    v_all: str
    keep: str  # bool mask tensor, True = attend, in the grouped [.., G*T, P+T] layout
    scale: float
    out: str  # [B, T, D] attention output (before o_proj)
    nodes: list
    # the 4-D RotaryEmbedding nodes of q and k: their 3-D replacements take their names
    # (hierarchical node names; the value names differ between a full trace and a stamp)
    rotary_names: tuple[str, str]


def _head_input(g: Graph, rot_out: str):
    """`RotaryEmbedding(Transpose(Reshape(lin)))` (the 4-D rotary of the first pass) ->
    (lin, [its three nodes])."""
    rot = g.only(rot_out, "RotaryEmbedding")
    if rot is None or rot.domain != ORT_DOMAIN:
        return None
    lin = _unheads(g, rot.input[0])
    return None if lin is None else (lin[0], [rot, *lin[1]])


def _unheads(g: Graph, t4: str):
    """`Transpose(Reshape(lin), perm 0,2,1,3)` -> (lin, [Transpose, Reshape])."""
    tr = g.only(t4, "Transpose")
    rs = tr and list(attr(tr, "perm", [])) == [0, 2, 1, 3] and g.only(tr.input[0], "Reshape")
    return (rs.input[0], [tr, rs]) if rs else None


def _cache_concat(g: Graph, name: str):
    cat = g.producer.get(name)
    if (cat is None or cat.op_type != "Concat" or attr(cat, "axis") != 2
            or len(cat.input) != 2 or cat.input[0] not in g.inputs):
        return None
    return cat


def _match_attention(g: Graph, sm) -> _AttentionMatch | None:
    """Softmax-anchored scaled-dot-product attention of the reference model (grouped query
    rows, past/present concat, masked_fill) -> its pieces, or None."""
    if sm.op_type != "Softmax" or attr(sm, "axis", -1) != -1:
        return None
    # a float16 graph takes the softmax in float32: Where -> Cast -> Softmax -> Cast
    cast_in = g.only(sm.input[0], "Cast")
    where = g.only(cast_in.input[0] if cast_in else sm.input[0], "Where")
    if where is None:
        return None
    cond, a, b = where.input
    if g.scalar(a) is not None and g.scalar(a) == float("-inf"):  # Where(masked, -inf, s)
        neg = g.producer.get(cond)
        if neg is None or neg.op_type != "Not":
            return None
        keep, scores = neg.input[0], b
    elif g.scalar(b) is not None and g.scalar(b) == float("-inf"):  # Where(keep, s, -inf)
        keep, scores = cond, a
    else:
        return None
    mul = g.only(scores, "Mul")
    mm = g.only(scores, "MatMul") if mul is None else g.input_from(mul, "MatMul")
    if mm is None:
        return None
    scale = 1.0 if mul is None else g.scalar(other(mul, mm.output[0]))
    kt = g.only(mm.input[1], "Transpose")
    if scale is None or kt is None or list(attr(kt, "perm", [])) != [0, 1, 3, 2]:
        return None
    qg = g.only(mm.input[0], "Reshape")
    q_head = _head_input(g, qg.input[0] if qg else mm.input[0])
    k_cat = _cache_concat(g, kt.input[0])
    k_head = k_cat and _head_input(g, k_cat.input[1])
    cast_out = g.next(sm.output[0], "Cast") if cast_in else None
    probs = (cast_out or sm).output[0]
    pv = g.next(probs, "MatMul")
    if q_head is None or k_head is None or pv is None or pv.input[0] != probs:
        return None
    v_cat = _cache_concat(g, pv.input[1])
    v_head = v_cat and _unheads(g, v_cat.input[1])
    back = g.next(pv.output[0], "Reshape")  # grouped rows back to heads (absent at G = 1)
    tr = g.next((back or pv).output[0], "Transpose")
    flat = tr and list(attr(tr, "perm", [])) == [0, 2, 1, 3] and g.next(tr.output[0], "Reshape")
    if v_head is None or not flat:
        return None
    nodes = [*q_head[1], *k_head[1], *v_head[1], k_cat, v_cat, kt, mm, where, sm, pv, tr,
             flat] + [n for n in (qg, mul, back, cast_in, cast_out) if n is not None]
    return _AttentionMatch(q_head[0], k_head[0], v_head[0], k_cat.input[0], v_cat.input[0],
                           k_cat.output[0], v_cat.output[0], keep, scale, flat.output[0], nodes,
                           (q_head[1][0].name, k_head[1][0].name))


def _ungrouped_mask(g: Graph, keep: str, groups: int):
    """The grouped keep mask `And(Tile(M, rows x G), K)` -> (tensor name, new nodes) of
    `And(M, K)`: the same rule, one row per query token, as Attention wants it."""
    helper = require("onnx").helper
    if groups == 1:
        return keep, []
    node = g.producer.get(keep)
    tile, key_mask = None, None
    if node is not None and node.op_type == "Tile":
        tile = node
    elif node is not None and node.op_type == "And":
        for i in node.input:
            if g.producer.get(i) is not None and g.producer[i].op_type == "Tile":
                tile, key_mask = g.producer[i], other(node, i)
    if tile is None:
        return None
    if key_mask is None:
        return tile.input[0], []
    name = keep + "/ungrouped"
    return name, [helper.make_node("And", [tile.input[0], key_mask], [name], name=name)]


def fuse_attention(proto, n_heads: int, n_kv_heads: int) -> int:
    """Second pass (after `fuse_for_onnxruntime`): each attention block -> the standard
    `Attention` op (opset 23) fed by 3-D rotary embeddings; returns how many were fused."""
    onnx = require("onnx")
    helper = onnx.helper
    g = Graph(proto.graph)
    groups = n_heads // n_kv_heads
    replace, dead, masks = {}, set(), {}
    cache = next((n for n in g.nodes if n.op_type == "RotaryEmbedding"), None)
    if cache is None:  # the first pass made no rotary: nothing here to feed Attention
        return 0
    for sm in g.nodes:
        m = _match_attention(g, sm)
        if m is None:
            continue
        if m.keep not in masks:
            masks[m.keep] = _ungrouped_mask(g, m.keep, groups)
        if masks[m.keep] is None:
            continue
        mask, mask_nodes = masks[m.keep]
        masks[m.keep] = (mask, [])  # made once, used by every layer
        rows, cos, sin = cache.input[1:4]
        q3, k3 = m.q_lin + "/rotary", m.k_lin + "/rotary"
        new = [*mask_nodes,
               helper.make_node("RotaryEmbedding", [m.q_lin, rows, cos, sin], [q3],
                                name=m.rotary_names[0], domain=ORT_DOMAIN, interleaved=0,
                                num_heads=n_heads),
               helper.make_node("RotaryEmbedding", [m.k_lin, rows, cos, sin], [k3],
                                name=m.rotary_names[1],
                                domain=ORT_DOMAIN, interleaved=0, num_heads=n_kv_heads),
               helper.make_node("Attention", [q3, k3, m.v_lin, mask, m.past_k, m.past_v],
                                [m.out, m.k_all, m.v_all], name=sm.name + "/Attention",
                                q_num_heads=n_heads, kv_num_heads=n_kv_heads, scale=m.scale)]
        replace[id(sm)] = new
        dead.update(id(n) for n in m.nodes if n is not sm)
    if not replace:
        return 0
    rewrite(proto, g, replace, dead)
    for op in proto.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = max(op.version, ATTENTION_OPSET)
    return len(replace)
