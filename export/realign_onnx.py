"""`scr.Realign` in ONNX (SCR_SPEC section 2): the node, its schema, and its local function.

The exporter emits one opaque `scr.Realign` node per SCR layer (via the custom
translation below) and the artifact carries a model-local FunctionProto of the
same name built from standard ops in float32, so onnxruntime runs the file as
is, while TensorRT swaps in the `Realign` plugin (found through the
`plugin_namespace` / `plugin_version` attributes).
"""

from __future__ import annotations

from scredge.contract import (
    DOMAIN,
    OP_TYPE,
    OP_VERSION,
    PLUGIN_ATTRS,
    REALIGN_INPUTS,
    REALIGN_OUTPUTS,
)
from scredge.deps import require

_registered = False


def register_schema() -> None:
    """Register the op's schema with onnx once per process (onnxscript needs it to emit
    the node; the saved model does not depend on it, it carries the function)."""
    global _registered
    if _registered:
        return
    onnx = require("onnx")
    defs = onnx.defs
    if defs.has(OP_TYPE, OP_VERSION, DOMAIN):
        _registered = True
        return
    param = defs.OpSchema.FormalParameter
    attr = defs.OpSchema.Attribute
    kind = defs.OpSchema.AttrType
    schema = defs.OpSchema(
        OP_TYPE,
        DOMAIN,
        OP_VERSION,
        doc="SCR realignment (SCR_SPEC section 2): relevance-weighted running mean, gated.",
        inputs=[param(n, "X" if i < 2 else "tensor(float)") for i, n in enumerate(REALIGN_INPUTS)],
        outputs=[param(n, "X" if i == 0 else "tensor(float)")
                 for i, n in enumerate(REALIGN_OUTPUTS)],
        type_constraints=[("X", ["tensor(float)", "tensor(float16)"], "h, m_prev and m")],
        attributes=[
            attr("kappa", defs.OpSchema.AttrType.FLOAT, "relevance bound", required=False),
            *(attr(name, kind.STRING, "how TensorRT finds the plugin", required=False)
              for name in PLUGIN_ATTRS),
        ],
    )
    defs.register_schema(schema)
    _registered = True


def translation_table() -> dict:
    """`custom_translation_table` for torch.onnx.export: scr::realign -> one scr.Realign node."""
    torch = require("torch")
    onnxscript = require("onnxscript")
    import scredge.ref.realign_op  # noqa: F401  (registers torch.ops.scr.realign)

    register_schema()
    scr = onnxscript.values.Opset(DOMAIN, OP_VERSION)

    def realign_node(h, m_prev, num_in, den_in, w_r, b_r, w_g, b_g, kappa: float = 8.0):
        return scr.Realign(h, m_prev, num_in, den_in, w_r, b_r, w_g, b_g,
                           kappa=kappa, **PLUGIN_ATTRS)

    return {torch.ops.scr.realign.default: realign_node}


def realign_function(opset: int):
    """The FunctionProto `scr.Realign`: SCR_SPEC section 2 in standard ops, float32 inside.

    Written for onnxruntime's CPU executor, where a decode step (T = 1) pays a fixed cost
    per node (dispatch, output allocation), which is most of this op's time there, while a
    prefill (T = 4096) pays per element. So: every weight-only expression (the [D,2] score
    matrix, its bias, the exp scale) is a constant that onnxruntime folds at load, and each
    remaining node does work at every T:
      - one MatMul scores relevance and gate together: h @ [-2 w_r / kappa, w_g] + b;
      - one Sigmoid serves both, since kappa * tanh(x) - kappa = -2 kappa * sigmoid(-2 x)
        (so e = exp(-2 kappa * sigmoid(-2 (w_r . h + b_r) / kappa)), no cancellation);
      - scores stay [B,T,1] (no Unsqueeze), one Split separates them;
      - m = m_prev + beta (c - m_prev): three [B,T,D] nodes instead of four;
      - the carries are one Gather each (index -1 drops the T axis), not Slice + Squeeze.
    The two Casts and the CastLike are identities for float32 (onnxruntime removes them).
    """
    onnx = require("onnx")
    from onnx import TensorProto, helper

    def const(name: str, value, dtype=TensorProto.FLOAT, dims=()):
        vals = value if isinstance(value, list) else [value]
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name + "_value", dtype, list(dims), vals))

    node = helper.make_node
    kappa = node("Constant", [], ["kappa"])
    kappa.attribute.append(onnx.AttributeProto(
        name="value_float", ref_attr_name="kappa", type=onnx.AttributeProto.FLOAT))
    split = {"num_outputs": 2} if opset >= 18 else {}  # equal halves either way
    nodes = [
        kappa,
        const("minus_two", -2.0),
        const("axis_t", 1, TensorProto.INT64),
        const("axes_t", [1], TensorProto.INT64, [1]),
        const("axes_col", [1], TensorProto.INT64, [1]),
        const("last", -1, TensorProto.INT64),
        # weight-only constants, folded at load: W [D,2], b [2], the exp scale -2 kappa
        node("Div", ["minus_two", "kappa"], ["r_scale"]),
        node("Mul", ["w_r", "r_scale"], ["w_r2"]),
        node("Mul", ["b_r", "r_scale"], ["b_r2"]),
        node("Unsqueeze", ["w_r2", "axes_col"], ["w_r_col"]),
        node("Unsqueeze", ["w_g", "axes_col"], ["w_g_col"]),
        node("Concat", ["w_r_col", "w_g_col"], ["w_rg"], axis=1),
        node("Concat", ["b_r2", "b_g"], ["b_rg"], axis=0),
        node("Mul", ["minus_two", "kappa"], ["e_scale"]),
        # per token
        node("Cast", ["h"], ["hf"], to=TensorProto.FLOAT),  # [B,T,D]
        node("Cast", ["m_prev"], ["mpf"], to=TensorProto.FLOAT),
        node("MatMul", ["hf", "w_rg"], ["s0"]),  # [B,T,2]
        node("Add", ["s0", "b_rg"], ["s"]),
        node("Sigmoid", ["s"], ["sig"]),  # [sigmoid(-2 x_r), beta]
        node("Split", ["sig"], ["sig_r", "beta"], axis=2, **split),  # [B,T,1] each
        node("Mul", ["sig_r", "e_scale"], ["log_e"]),  # r - kappa, in (-2 kappa, 0)
        node("Exp", ["log_e"], ["e"]),
        # N_t = num_in + cumsum(e h); Z_t = den_in + cumsum(e)                [B,T,D], [B,T,1]
        node("Mul", ["e", "hf"], ["eh"]),
        node("CumSum", ["eh", "axis_t"], ["cs_num"]),
        node("CumSum", ["e", "axis_t"], ["cs_den"]),
        node("Unsqueeze", ["num_in", "axes_t"], ["num_in3"]),  # [B,1,D]
        node("Unsqueeze", ["den_in", "axes_t"], ["den_in3"]),  # [B,1,1]
        node("Add", ["num_in3", "cs_num"], ["num_all"]),
        node("Add", ["den_in3", "cs_den"], ["den_all"]),
        node("Div", ["num_all", "den_all"], ["c"]),
        # m = (1 - beta) m_prev + beta c = m_prev + beta (c - m_prev)
        node("Sub", ["c", "mpf"], ["delta"]),
        node("Mul", ["beta", "delta"], ["moved"]),
        node("Add", ["mpf", "moved"], ["m32"]),
        node("CastLike", ["m32", "h"], ["m"]),
        # carries out: the last token's prefix sums                          [B,D], [B,1]
        node("Gather", ["num_all", "last"], ["num_out"], axis=1),
        node("Gather", ["den_all", "last"], ["den_out"], axis=1),
    ]
    return helper.make_function(
        DOMAIN, OP_TYPE, list(REALIGN_INPUTS), list(REALIGN_OUTPUTS), nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=["kappa", *PLUGIN_ATTRS],
        doc_string="SCR_SPEC section 2, float32 inside; only m is cast back to the dtype of h.",
    )
