"""The decoder graph of SCR_SPEC section 3: one ONNX graph for prefill, decode and chunked
prefill, exported with the torch.export-based exporter (`dynamo=True`).

The graph is the reference model itself, wrapped to take and return flat tensors
with the spec's names; the cache rule (keep the last W-1 keys) is in the model's
forward, so it is in the graph. After export the nodes are renamed after the
modules they come from and the `scr.Realign` function is attached.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings

from scredge import contract
from scredge.config import SCRConfig
from scredge.contract import GraphIO
from scredge.deps import require
from scredge.export import realign_onnx
from scredge.export.fold_scale import fold_scr_scale

DEFAULT_OPSET = 18
MIN_OPSET = 17


def _wrapper(model):
    torch = require("torch")
    from scredge.ref.model import ModelState

    c: SCRConfig = model.config

    class FlatDecoder(torch.nn.Module):
        """Flat tensors in and out, in GraphIO order."""

        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids, position_ids, attention_mask, past, scr_past):
            state = ModelState(
                keys=list(past[0::2]), values=list(past[1::2]),
                scr_num={i: scr_past[2 * j] for j, i in enumerate(c.scr_layers)},
                scr_den={i: scr_past[2 * j + 1] for j, i in enumerate(c.scr_layers)},
            )
            logits, new = self.m(input_ids, position_ids, state, attention_mask)
            present = [t for i in range(c.n_layers) for t in (new.keys[i], new.values[i])]
            scr_present = [t for i in c.scr_layers for t in (new.scr_num[i], new.scr_den[i])]
            return logits, present, scr_present

    return FlatDecoder()


def example_inputs(c: SCRConfig, dtype, batch: int = 2, new: int = 3, past: int = 2):
    """Example tensors for tracing; sizes >= 2 so no dimension is specialised to 0 or 1."""
    torch = require("torch")
    if c.window is not None:
        past = min(past, c.window - 1)
    ids = torch.zeros(batch, new, dtype=torch.int64)
    pos = torch.arange(past, past + new, dtype=torch.int64).expand(batch, new).contiguous()
    mask = torch.ones(batch, past + new, dtype=torch.int64)
    kv = (batch, c.n_kv_heads, past, c.head_dim)
    pasts = [torch.zeros(kv, dtype=dtype) for _ in range(2 * c.n_layers)]
    scr = [t for _ in c.scr_layers for t in (torch.zeros(batch, c.d_model),
                                             torch.ones(batch, 1))]
    return ids, pos, mask, pasts, scr


def _dynamic_shapes(c: SCRConfig, max_seq: int):
    Dim = require("torch").export.Dim
    batch = Dim(contract.BATCH, min=1, max=4096)
    seq = Dim(contract.SEQUENCE, min=1, max=max_seq)
    past_max = c.window - 1 if c.window is not None else max_seq
    past = Dim(contract.PAST, min=0, max=max(past_max, 2))
    kv = {0: batch, 2: past}
    return (
        {0: batch, 1: seq},
        {0: batch, 1: seq},
        {0: batch, 1: Dim.AUTO},  # P + T: the exporter derives it from the past and ids
        [kv] * (2 * c.n_layers),
        [{0: batch}] * (2 * len(c.scr_layers)),
    )


def export_graph(model, opset: int = DEFAULT_OPSET, max_seq: int = 1 << 20,
                 full_check: bool = True):
    """Trace `model` (already in its export dtype) to an onnx.ModelProto with the
    `scr.Realign` nodes and function, spec names and readable node names; checked by
    onnx's checker (`full_check`: with strict shape inference too)."""
    torch = require("torch")
    onnx = require("onnx")
    c: SCRConfig = model.config
    io = GraphIO.for_config(c)
    dtype = model.model.embed_tokens.weight.dtype
    args = example_inputs(c, dtype)
    # The exporter warns about torchvision ops and axis renames that do not concern us.
    with torch.no_grad(), warnings.catch_warnings(), _quiet_logger("torch.onnx"):
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        program = torch.onnx.export(
            _wrapper(model).eval(), args, dynamo=True, opset_version=opset,
            input_names=list(io.inputs), output_names=list(io.outputs),
            dynamic_shapes=_dynamic_shapes(c, max_seq),
            custom_translation_table=realign_onnx.translation_table(),
            verbose=False, optimize=True,
        )
    proto = program.model_proto
    _rename_nodes(proto)
    fold_scr_scale(proto)
    _attach_realign_function(proto, opset)
    _name_dynamic_dims(proto)
    proto.producer_name = "scredge"
    onnx.checker.check_model(proto, full_check=full_check)
    return proto


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def scope_name(module_path: str) -> str:
    """`model.layers.3.self_attn.q_proj` -> `/model/layers.3/attn/q_proj`: how the graph
    names a module's nodes (the prefix of each node name)."""
    parts = re.sub(r"\.(\d+)", r"#\1", module_path).split(".")
    return "/" + "/".join(p.replace("#", ".").replace("self_attn", "attn") for p in parts)


def _rename_nodes(proto) -> None:
    """`/model/layers.3/attn/q_proj/MatMul` from the module scope the exporter records."""
    seen: dict[str, int] = {}
    for node in proto.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = re.findall(r"'([^']*)'", meta.get("pkg.torch.onnx.name_scopes", ""))
        modules = [s for s in scopes[:-1] if s.startswith("m.")]
        base = scope_name(modules[-1][2:] if modules else "model") + "/" + node.op_type
        count = seen.get(base, 0)
        seen[base] = count + 1
        node.name = base if count == 0 else f"{base}_{count}"


def _attach_realign_function(proto, opset: int) -> None:
    onnx = require("onnx")
    if not any(n.domain == contract.DOMAIN for n in proto.graph.node):
        return  # no SCR layers: a plain transformer graph
    del proto.functions[:]
    proto.functions.append(realign_onnx.realign_function(opset))
    domains = {o.domain for o in proto.opset_import}
    if contract.DOMAIN not in domains:
        proto.opset_import.append(
            onnx.helper.make_opsetid(contract.DOMAIN, contract.OP_VERSION))


def _name_dynamic_dims(proto) -> None:
    """Give every symbolic dimension of the graph I/O a stable, meaningful name."""
    inputs = {v.name for v in proto.graph.input}
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if value.name in contract.TOKEN_INPUTS:
            wanted = (contract.BATCH, contract.SEQUENCE)
        elif value.name == contract.ATTENTION_MASK:
            wanted = (contract.BATCH, contract.MASK_LENGTH)
        elif value.name == contract.LOGITS:
            wanted = (contract.BATCH, contract.SEQUENCE, None)
        elif contract.is_kv(value.name):
            past = contract.PAST if value.name in inputs else contract.PRESENT
            wanted = (contract.BATCH, None, past, None)
        else:  # SCR carries
            wanted = (contract.BATCH, None)
        for dim, name in zip(dims, wanted):
            if name is not None:
                dim.ClearField("dim_value")
                dim.dim_param = name
