"""Quantized graphs of a plan (SCR_SPEC section 4, v3): each weight matrix of the float
graph at the precision the plan gives it, as `MatMulNBits` (the onnxruntime form) or
`DequantizeLinear` + `MatMul` (the TensorRT form, symmetric), with the numbers of
export/qgrid.py or export/gptq.py; config.json's `quantization` record of the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from scredge.config import SCRConfig
from scredge.contract import ORT_DOMAIN, TRT_ONNX_FILE
from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.export.graph_match import drop_unused
from scredge.export.ort_fusions import MIN_ONNXRUNTIME, FusionCounts, fuse_for_onnxruntime
from scredge.export.qgrid import Grid
from scredge.export.quantize import (
    HEAD,
    ORT_FORMAT,
    QUANTIZER,
    TIED_HEAD_SUFFIX,
    TRT_FORMAT,
    QuantSpec,
    materialize_tied_head,
    matrix_names,
    quantize_ort,
    to_dequantize_form,
    weight_matmuls,
)

Numbers = Callable[[str, Grid], tuple[np.ndarray, np.ndarray, np.ndarray]]


class MatrixNumbers:
    """Per matrix name and grid, the integers q [N,K], scales and zero points [N,K/block] of
    the quantized matrix (round-to-nearest, or GPTQ with the matrix's input Hessian), each
    computed once: the plans tried at export share them."""

    def __init__(self, base, block: int, hessians: dict[str, np.ndarray] | None = None,
                 read: Callable | None = None):
        read = read or require("onnx").numpy_helper.to_array  # or FloatSource.read
        inits = {i.name: i for i in base.graph.initializer}
        nodes = {n.name: n for n in base.graph.node}
        self.names = matrix_names(weight_matmuls(base))
        self.weight = {m: (lambda i=inits[nodes[n].input[1]]: read(i).T)
                       for m, n in zip(self.names, weight_matmuls(base))}
        self.sizes = {m: int(np.prod(inits[nodes[n].input[1]].dims))
                      for m, n in zip(self.names, weight_matmuls(base))}
        self.block, self.hessians, self._cache = block, hessians, {}

    def __call__(self, name: str, grid: Grid):
        key = (name, grid)
        if key not in self._cache:
            q, s, z = self.compute(name, grid)
            if grid.bits == 4:  # kept two to a byte: half the memory of the search's cache
                q = q[:, 0::2] | (q[:, 1::2] << 4)
            self._cache[key] = q, s, z
        q, s, z = self._cache[key]
        if grid.bits == 4:
            nibbles = np.empty((q.shape[0], q.shape[1] * 2), np.uint8)
            nibbles[:, 0::2], nibbles[:, 1::2] = q & 15, q >> 4
            q = nibbles
        return q, s, z

    def compute(self, name: str, grid: Grid):
        """The numbers of `name` on `grid`, computed now and not kept (a cost estimate's)."""
        from scredge.export.qgrid import rtn

        w = self.weight[name]()
        if self.hessians is None:
            return rtn(w, grid, self.block)
        from scredge.export.gptq import gptq_grid

        return gptq_grid(w, self.hessians[name], grid, self.block)

    def forget(self) -> None:
        """Drop the numbers kept so far (the next graph's grids are its own)."""
        self._cache.clear()


def planned_graph(base, plan: dict[str, str], grids: GridOf, numbers: Numbers,
                  block: int, share_embedding: bool = False, hold=None,
                  level: Callable[[bool], int] | None = None):
    """A copy of `base` (its head materialized) where each weight MatMul whose matrix the plan
    puts at int4 / int8 becomes a `MatMulNBits` holding `numbers(matrix, grids(matrix, precision))`
    (zero points when the grid has them); "float" matrices stay MatMul. With
    `share_embedding`, a tied embedding reads the quantized head's table
    (`share_tied_embedding`). `hold(array, name)`: the initializer of a quantized tensor
    (export/quant_store.FloatSource.hold keeps the bytes beside the graph; default: in it).
    `level(folded)`: MatMulNBits' accuracy_level (QuantSpec.accuracy_level; default: its
    default activations)."""
    onnx = require("onnx")
    proto = onnx.ModelProto()
    proto.CopyFrom(base)
    by_node = dict(zip(weight_matmuls(proto), matrix_names(weight_matmuls(proto))))
    nodes, made = [], set()  # names made here: q/k/v (gate/up) share their block sums
    for node in proto.graph.node:
        precision = plan.get(by_node.get(node.name, ""), "float")
        if precision == "float":
            nodes.append(node)
            continue
        grid = grids(by_node[node.name], precision)
        new, inits = _nbits_node(node, grid, *numbers(by_node[node.name], grid), block, hold,
                                 level)
        nodes.extend(n for n in new if n.output[0] not in made)
        proto.graph.initializer.extend(i for i in inits if i.name not in made)
        made.update([*(n.output[0] for n in new), *(i.name for i in inits)])
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    if share_embedding:
        share_tied_embedding(proto)
    if not any(o.domain == ORT_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(ORT_DOMAIN, 1))
    drop_unused(proto)
    return proto


SHARED_EMBEDDING = "GatherBlockQuantized"


def share_tied_embedding(proto) -> bool:
    """SCR_SPEC v3 section 4: a tied embedding whose head became a MatMulNBits without float
    zero points reads the head's quantized table through onnxruntime's
    `com.microsoft.GatherBlockQuantized` (the same bytes reshaped to [V, D * bits / 8]),
    so the folder holds one quantized table instead of a float one; returns whether it did."""
    helper, numpy_helper = require("onnx").helper, require("onnx").numpy_helper
    inits = {i.name: i for i in proto.graph.initializer}
    head = next((n for n in proto.graph.node if n.op_type == "MatMulNBits"
                 and TIED_HEAD_SUFFIX in n.input[1]), None)
    if head is None or (len(head.input) > 3 and inits[head.input[3]].data_type
                        != require("onnx").TensorProto.UINT8):
        return False
    table = head.input[1].split(TIED_HEAD_SUFFIX)[0]
    gather = next((n for n in proto.graph.node if n.op_type == "Gather"
                   and n.input[0] == table), None)
    if gather is None:
        return False
    a = {x.name: helper.get_attribute_value(x) for x in head.attribute}
    n, kb = a["N"], a["K"] // a["block_size"]
    stem = gather.name or "/model/embed_tokens/Gather"
    shapes = {"data": [n, a["K"] * a["bits"] // 8], "scales": [n, kb],
              "zp": [n, -1]}
    ins, extra = [], []
    for (key, shape), src in zip(shapes.items(), head.input[1:]):
        out = f"{stem}/{key}"
        extra.append(numpy_helper.from_array(np.array(shape, np.int64), out + "_shape"))
        ins.append(helper.make_node("Reshape", [src, out + "_shape"], [out],
                                    name=f"{stem}/Reshape_{key}"))
    q = helper.make_node(SHARED_EMBEDDING,
                         [ins[0].output[0], gather.input[1], *(r.output[0] for r in ins[1:])],
                         list(gather.output), name=stem.rsplit("/", 1)[0] + "/" +
                         SHARED_EMBEDDING, domain=ORT_DOMAIN, bits=a["bits"],
                         block_size=a["block_size"], gather_axis=0, quantize_axis=1)
    nodes = []
    for node in proto.graph.node:
        nodes.extend([*ins, q] if node is gather else [node])
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    proto.graph.initializer.extend(extra)
    drop_unused(proto)
    return True


def _nbits_node(node, grid: Grid, q: np.ndarray, s: np.ndarray, z: np.ndarray, block: int,
                hold=None, level: Callable[[bool], int] | None = None):
    """MatMulNBits for MatMul `node` (named as onnxruntime's quantizer names it)."""
    from scredge.export.qgrid import pack_weights, pack_zero_points

    helper = require("onnx").helper
    hold = hold or require("onnx").numpy_helper.from_array
    level = level or QuantSpec(grid.bits).accuracy_level
    n, k = q.shape
    w = node.input[1]
    inits = [hold(pack_weights(q, grid.bits, block), f"{w}_Q{grid.bits}"),
             hold(np.ascontiguousarray(s.ravel().astype(np.float32)), f"{w}_scales")]
    fold = grid.kind == "asym_float" and grid.bits == 4 and k % block == 0
    if not grid.symmetric and not fold:
        inits.append(hold(pack_zero_points(z, grid), f"{w}_zero_points"))
    out = f"{node.output[0]}_nbits" if fold else node.output[0]
    new = helper.make_node("MatMulNBits", [node.input[0], *(i.name for i in inits)],
                           [out], name=f"{node.name}_Q{grid.bits}",
                           domain=ORT_DOMAIN, K=k, N=n, bits=grid.bits, block_size=block,
                           accuracy_level=level(fold))
    if not fold:
        return [new], inits
    more, extra = _zero_point_correction(node, out, s, z, block, hold)
    return [new, *more], inits + extra


def _zero_point_correction(node, nbits_out: str, s: np.ndarray, z: np.ndarray, block: int,
                           hold):
    """Float zero points without onnxruntime's slow path: its CPU MatMulNBits has no fast
    kernel for them (benchmarks/bench_matmulnbits_zero_points.py: ~50x per node), so
    (q - z) * s = (q - 8) * s + (8 - z) * s: MatMulNBits with the default zero point 8, plus
    the activation's per-block sums [.., K/block] times C = ((8 - z) * s)^T [K/block, N]
    (exactly the same numbers; the tier checks the rounding). Activations are [batch,
    sequence, K], as every projection's in our graphs."""
    helper, numpy_helper = require("onnx").helper, require("onnx").numpy_helper
    n, blocks = s.shape
    w, x, base = node.input[1], node.input[0], node.name
    # named by the activation, so matrices reading one activation share the sums
    sums = f"{x}_sums_of_{block}"
    inits = [numpy_helper.from_array(np.array([0, 0, blocks, block], np.int64),
                                     f"block_shape_{blocks}x{block}"),
             numpy_helper.from_array(np.array([-1], np.int64), "block_axis"),
             hold(np.ascontiguousarray(((8.0 - z) * s).T.astype(np.float32)),
                  f"{w}_zero_point_correction")]
    nodes = [helper.make_node("Reshape", [x, inits[0].name], [f"{x}_blocks_of_{block}"],
                              name=f"{sums}/Reshape"),
             helper.make_node("ReduceSum", [f"{x}_blocks_of_{block}", inits[1].name],
                              [sums], name=f"{sums}/ReduceSum", keepdims=0),
             helper.make_node("MatMul", [sums, inits[2].name],
                              [f"{base}_zp_term"], name=f"{base}_zp/MatMul"),
             helper.make_node("Add", [nbits_out, f"{base}_zp_term"], list(node.output),
                              name=f"{base}_zp/Add")]
    return nodes, inits


GridOf = Callable[[str, str], Grid]  # (matrix name, precision) -> its grid


def ort_grids(spec: QuantSpec) -> GridOf:
    """The onnxruntime form's grids: int4 on the spec's grid, int8 symmetric. A tied head
    whose table the embedding shares takes integer zero points at most (GatherBlockQuantized
    has no float zero points)."""
    int4 = Grid(4, spec.int4_grid)
    head4 = Grid(4, "asym") if spec.quantize_embedding and int4.kind == "asym_float" else int4

    def grid(name: str, precision: str) -> Grid:
        if precision == "int8":
            return Grid(8, "sym")
        return head4 if name == HEAD else int4

    return grid


def trt_grids(name: str, precision: str) -> Grid:
    """TensorRT's weight-only GEMMs take symmetric weights only."""
    return Grid(4 if precision == "int4" else 8, "sym")


def ort_form(base, plan: dict[str, str], spec: QuantSpec, numbers: Numbers,
             config: SCRConfig, source=None):
    """The onnxruntime form of `plan`: MatMulNBits + onnxruntime's fused kernels. `source`:
    the export/quant_store.FloatSource a base whose weights are not loaded reads them from
    (and checks the graph with)."""
    hold = None if source is None else source.hold
    proto = planned_graph(base, plan, ort_grids(spec), numbers, spec.block_size,
                          share_embedding=spec.quantize_embedding, hold=hold,
                          level=spec.accuracy_level)
    (require("onnx").checker.check_model if source is None else source.check)(proto)
    # after the checker: SimplifiedLayerNormalization is onnxruntime's, in the ONNX domain,
    # which the checker does not know; onnxruntime loads and the tier runs the result
    return proto, fuse_for_onnxruntime(proto, config, None if source is None else source.read,
                                       hold)


def trt_form(base, plan: dict[str, str], spec: QuantSpec, numbers: Numbers,
             source=None):
    """The TensorRT form of `plan`: symmetric weights, DequantizeLinear + MatMul (`source`:
    as in ort_form)."""
    read, hold = (None, None) if source is None else (source.read, source.hold)
    proto = to_dequantize_form(planned_graph(base, plan, trt_grids, numbers,
                                             spec.block_size, hold=hold), read, hold)
    (require("onnx").checker.check_model if source is None else source.check)(proto)
    return proto


def prepared_base(float_proto, source=None):
    """A copy of the float graph with its tied head materialized (quantizable); with a
    `source` (export/quant_store.FloatSource) whose data holds the embedding, the head is
    that table read transposed, not a copy."""
    onnx = require("onnx")
    base = onnx.ModelProto()
    base.CopyFrom(float_proto)
    tie = None
    if source is not None and any(source.is_lazy(i) for i in base.graph.initializer):
        tie = source.tie_head
    materialize_tied_head(base, tie)
    return base


@dataclass(frozen=True)
class QuantizedGraphs:
    ort: object  # onnx.ModelProto, MatMulNBits + onnxruntime's fused kernels
    trt: object  # onnx.ModelProto, DequantizeLinear + MatMul
    matrices: list[str]
    trt_method: str
    fusions: FusionCounts


def quantize_graphs(float_proto, spec: QuantSpec, config: SCRConfig,
                    hessians: dict[str, np.ndarray] | None = None) -> QuantizedGraphs:
    """Both quantized forms of `float_proto` (an opset >= 21 float32 decoder graph of
    `config`), every matrix at `spec.bits` (a uniform plan); the onnxruntime form with
    onnxruntime's fused kernels (ort_fusions.py). `gptq` needs `hessians` (per matrix
    name: export/gptq.py's input_hessians of the reference model, by_matrix)."""
    base = prepared_base(float_proto)
    nodes = weight_matmuls(base)
    if spec.method == "hqq":
        return _hqq_graphs(base, spec, config, nodes)
    if spec.method == "gptq" and hessians is None:
        raise ScredgeError("gptq needs the calibration activations", received="none",
                           fix="pass hessians=input_hessians(model, calibration ids)")
    numbers = MatrixNumbers(base, spec.block_size, hessians if spec.method == "gptq" else None)
    plan = {m: f"int{spec.bits}" for m in numbers.names}
    ort, fusions = ort_form(base, plan, spec, numbers, config)
    return QuantizedGraphs(ort, trt_form(base, plan, spec, numbers), numbers.names,
                           spec.method, fusions)


def _hqq_graphs(base, spec: QuantSpec, config: SCRConfig, nodes: list[str]):
    """HQQ (onnxruntime's, float zero points) for onnxruntime; rtn for TensorRT."""
    onnx = require("onnx")

    def copy():
        p = onnx.ModelProto()
        p.CopyFrom(base)
        return p

    ort = quantize_ort(copy(), spec, nodes)
    trt = to_dequantize_form(quantize_ort(copy(), QuantSpec(spec.bits, spec.block_size), nodes))
    for p in (ort, trt):
        onnx.checker.check_model(p)
    fusions = fuse_for_onnxruntime(ort, config)
    return QuantizedGraphs(ort, trt, matrix_names(nodes), "rtn", fusions)


def config_section(spec: QuantSpec, chosen: dict, ort_file: str,
                   calibration: dict | None = None) -> dict:
    """config.json's `quantization` (SCR_SPEC section 4, v3): what, how, which graph each
    backend reads, and per graph its plan: per matrix bits, block size, symmetry and method,
    the mean bits per weight and the fraction of projection weights in int4. `chosen` maps
    "ort" / "trt" to quantized_artifact.Chosen; `calibration` is the calibration text's
    record."""
    from scredge.export.mixed import is_projection

    grids = {"ort": ort_grids(spec), "trt": trt_grids}

    def graph(backend: str, file: str, fmt: str) -> dict:
        c = chosen[backend]
        out = {"file": file, "format": fmt, "method": c.method, "bits": c.plan.bits,
               "symmetric": all(grids[backend](m, p).symmetric
                                for m, p in c.plan.precision.items() if p != "float"),
               "mean_bits_per_weight": round(c.plan.mean_bits(), 4),
               "int4_projection_weights": round(c.plan.fraction("int4", is_projection), 4),
               "plans_tried": len(c.tried) + 1, "embedding": c.embedding,
               "matrices": {m: _matrix_record(m, p, grids[backend], spec, c.method)
                            for m, p in c.plan.precision.items()}}
        if c.fusions is not None:
            out.update(fused=asdict(c.fusions), min_onnxruntime=MIN_ONNXRUNTIME)
        return out

    return {
        "bits": spec.bits, "block_size": spec.block_size, "method": spec.method,
        "symmetric": Grid(4, spec.int4_grid).symmetric if spec.bits == 4 else True,
        "mixed_precision": "auto" if spec.mixed else "off",
        "weights": "weight-only",
        # the onnxruntime form's MatMulNBits activations (QuantSpec.accuracy_level)
        "activations": spec.activations or "int8 (float32 for int4 on float zero points)",
        "matrices": list(next(iter(chosen.values())).plan.precision),
        "float": ["embeddings (unless a graph's `embedding` says otherwise)", "norms",
                  "Realign inputs (float32)"],
        "quantizer": QUANTIZER if spec.method == "hqq" else
        "scredge.export.qgrid (rtn) / scredge.export.gptq (gptq), MatMulNBits laid out as "
        f"{QUANTIZER} writes it",
        **({"calibration": calibration} if calibration is not None else {}),
        "graphs": {b: graph(b, *files) for b, files in (
            ("ort", (ort_file, ORT_FORMAT)), ("trt", (TRT_ONNX_FILE, TRT_FORMAT)))
            if b in chosen},  # the targeted forms (--target)
        "verification": {b: c.report.to_json() for b, c in chosen.items()},
    }


def _matrix_record(name: str, precision: str, grids: GridOf, spec: QuantSpec,
                   method: str) -> dict:
    if precision == "float":
        return {"bits": 32}
    g = grids(name, precision)
    return {"bits": g.bits, "block_size": spec.block_size, "symmetric": g.symmetric,
            "zero_points": {"sym": None, "asym": "uint8", "asym_float": "float32"}[g.kind],
            "method": method}
