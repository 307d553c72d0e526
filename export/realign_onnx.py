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
    """The FunctionProto `scr.Realign`: SCR_SPEC section 2 in standard ops, float32 inside."""
    onnx = require("onnx")
    from onnx import TensorProto, helper

    def const(name: str, value, dtype=TensorProto.FLOAT, dims=()):
        vals = value if isinstance(value, list) else [value]
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name + "_value", dtype, list(dims), vals))

    kappa = helper.make_node("Constant", [], ["kappa"])
    kappa.attribute.append(onnx.AttributeProto(
        name="value_float", ref_attr_name="kappa", type=onnx.AttributeProto.FLOAT))
    nodes = [
        kappa,
        const("one", 1.0),
        const("axis_t", 1, TensorProto.INT64),
        const("axes_t", [1], TensorProto.INT64, [1]),
        const("axes_last", [-1], TensorProto.INT64, [1]),
        const("last_start", [-1], TensorProto.INT64, [1]),
        const("last_end", [2**62], TensorProto.INT64, [1]),
        helper.make_node("Cast", ["h"], ["hf"], to=TensorProto.FLOAT),  # [B,T,D]
        helper.make_node("Cast", ["m_prev"], ["mpf"], to=TensorProto.FLOAT),
        # r = kappa * tanh((w_r . h + b_r) / kappa); e = exp(r - kappa)        [B,T]
        helper.make_node("MatMul", ["hf", "w_r"], ["sr0"]),
        helper.make_node("Add", ["sr0", "b_r"], ["sr"]),
        helper.make_node("Div", ["sr", "kappa"], ["sr_k"]),
        helper.make_node("Tanh", ["sr_k"], ["tanh_r"]),
        helper.make_node("Mul", ["tanh_r", "kappa"], ["r"]),
        helper.make_node("Sub", ["r", "kappa"], ["r_shift"]),
        helper.make_node("Exp", ["r_shift"], ["e0"]),
        helper.make_node("Unsqueeze", ["e0", "axes_last"], ["e"]),  # [B,T,1]
        # N_t = num_in + cumsum(e h); Z_t = den_in + cumsum(e)                [B,T,D], [B,T,1]
        helper.make_node("Mul", ["e", "hf"], ["eh"]),
        helper.make_node("CumSum", ["eh", "axis_t"], ["cs_num"]),
        helper.make_node("CumSum", ["e", "axis_t"], ["cs_den"]),
        helper.make_node("Unsqueeze", ["num_in", "axes_t"], ["num_in3"]),  # [B,1,D]
        helper.make_node("Unsqueeze", ["den_in", "axes_t"], ["den_in3"]),  # [B,1,1]
        helper.make_node("Add", ["num_in3", "cs_num"], ["num_all"]),
        helper.make_node("Add", ["den_in3", "cs_den"], ["den_all"]),
        helper.make_node("Div", ["num_all", "den_all"], ["c"]),
        # beta = sigmoid(w_g . h + b_g); m = (1 - beta) m_prev + beta c
        helper.make_node("MatMul", ["hf", "w_g"], ["sg0"]),
        helper.make_node("Add", ["sg0", "b_g"], ["sg"]),
        helper.make_node("Sigmoid", ["sg"], ["beta0"]),
        helper.make_node("Unsqueeze", ["beta0", "axes_last"], ["beta"]),  # [B,T,1]
        helper.make_node("Sub", ["one", "beta"], ["keep"]),
        helper.make_node("Mul", ["keep", "mpf"], ["m_old"]),
        helper.make_node("Mul", ["beta", "c"], ["m_new"]),
        helper.make_node("Add", ["m_old", "m_new"], ["m32"]),
        helper.make_node("CastLike", ["m32", "h"], ["m"]),
        # carries out: the last token's prefix sums                          [B,D], [B,1]
        helper.make_node("Slice", ["num_all", "last_start", "last_end", "axes_t"], ["num_last"]),
        helper.make_node("Slice", ["den_all", "last_start", "last_end", "axes_t"], ["den_last"]),
        helper.make_node("Squeeze", ["num_last", "axes_t"], ["num_out"]),
        helper.make_node("Squeeze", ["den_last", "axes_t"], ["den_out"]),
    ]
    return helper.make_function(
        DOMAIN, OP_TYPE, list(REALIGN_INPUTS), list(REALIGN_OUTPUTS), nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=["kappa", *PLUGIN_ATTRS],
        doc_string="SCR_SPEC section 2, float32 inside; only m is cast back to the dtype of h.",
    )
