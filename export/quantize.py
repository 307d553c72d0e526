"""Weight-only int8 / int4 graphs (SCR_SPEC section 4), made by onnxruntime's own quantizer.

The float graph's weight matrices (every MatMul whose second input is a constant: q, k, v,
o, gate, up, down, SCR `proj`, the output head) are quantized per block of `block_size`
rows by `onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer`; nothing
here computes a scale. Embeddings (Gather), norms and every `Realign` input stay float32.

Two graphs come out:
- the onnxruntime form: `com.microsoft.MatMulNBits`, as the quantizer writes it;
- the TensorRT form: standard blocked `DequantizeLinear` (opset 21, INT4/INT8, no zero
  point: TensorRT's weight-only GEMMs take symmetric weights) feeding the original
  `MatMul`. It is rewritten *from* the MatMulNBits nodes: the same integers and scales,
  except that TensorRT takes only positive scales (see `positive_scales`).

Methods: `rtn` (round-to-nearest, symmetric: both graphs), `hqq` (onnxruntime's
half-quadratic quantizer, int4, no calibration data; it stores float zero points, which
`DequantizeLinear` cannot express, so its TensorRT form is the `rtn` quantization and the
config says so per graph) and `gptq` (activation-aware, with a calibration text: GPTQ's
integers and scales on onnxruntime's symmetric grid, export/gptq.py; both graphs).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scredge.config import SCRConfig
from scredge.contract import ORT_DOMAIN, TRT_ONNX_FILE
from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.export.graph_match import drop_unused
from scredge.export.ort_fusions import MIN_ONNXRUNTIME, FusionCounts, fuse_for_onnxruntime

QUANT_BITS = (8, 4)
QUANT_METHODS = ("rtn", "hqq", "gptq")
CALIBRATED_METHODS = ("gptq",)
DEFAULT_BLOCK_SIZE = 32
QUANT_OPSET = 21  # blocked DequantizeLinear and INT4 tensors
# MatMulNBits' accuracy_level 4: onnxruntime's CPU kernels quantize activations to int8 per
# block (what onnxruntime-genai's builder sets); at the default (0) its int8 weights run a
# float32 path measured 3.5x slower than float32 weights on `tiny`. The quantized tier at
# export judges the result, activations included.
ORT_ACCURACY_LEVEL = 4
ORT_FORMAT = "MatMulNBits"
TRT_FORMAT = "DequantizeLinear+MatMul"
_HQQ_BITS = (4,)  # onnxruntime's CPU MatMulNBits refuses 8-bit weights with float zero points


@dataclass(frozen=True)
class QuantSpec:
    bits: int
    block_size: int = DEFAULT_BLOCK_SIZE
    method: str = "rtn"
    calibration: Path | None = None  # the text file of a calibrated method (gptq)

    @classmethod
    def parse(cls, text: str | int, block_size: int | None, method: str | None,
              calibration: str | Path | None = None) -> QuantSpec:
        """`int8` / `int4` (or 8 / 4) from the command line, checked; a calibration file is
        read and checked here too (the model is not needed for that)."""
        t = str(text).lower().removeprefix("int")
        if not t.isdigit() or int(t) not in QUANT_BITS:
            raise ScredgeError("unknown quantization", received=repr(text),
                               expected="int8 or int4")
        spec = cls(int(t), DEFAULT_BLOCK_SIZE if block_size is None else block_size,
                   method or "rtn", None if calibration is None else Path(calibration))
        if spec.method not in QUANT_METHODS:
            raise ScredgeError("unknown quantization method", received=repr(spec.method),
                               expected=f"one of {list(QUANT_METHODS)}")
        spec.check_calibration()
        if spec.method == "hqq" and spec.bits not in _HQQ_BITS:
            raise ScredgeError("hqq is offered for int4 only", received=f"int{spec.bits} hqq",
                               expected="--quantize int4 --quant-method hqq, or method rtn",
                               fix="onnxruntime's CPU MatMulNBits does not take 8-bit weights "
                                   "with the float zero points HQQ produces")
        b = spec.block_size
        if not isinstance(b, int) or b < 16 or b & (b - 1):
            raise ScredgeError("invalid quantization block size", received=b,
                               expected="a power of two >= 16 (default 32)")
        return spec

    def check_calibration(self) -> None:
        """A calibrated method needs its text, which must be readable and not the held-out
        text; another method takes none."""
        if self.method in CALIBRATED_METHODS and self.calibration is None:
            raise ScredgeError(f"--quant-method {self.method} needs a calibration text",
                               received="no --calibration",
                               expected="--calibration FILE, UTF-8 text like the model will "
                                        "see (at least a few thousand tokens)",
                               fix="pass --calibration, or use --quant-method rtn or hqq")
        if self.method not in CALIBRATED_METHODS and self.calibration is not None:
            raise ScredgeError("--calibration is for an activation-aware method",
                               received=f"--quant-method {self.method} with --calibration",
                               expected=f"--quant-method {' or '.join(CALIBRATED_METHODS)}",
                               fix="add --quant-method gptq, or drop --calibration")
        if self.calibration is not None:
            from scredge.export.gptq import calibration_text

            calibration_text(self.calibration)

    def check(self, dtype: str, config: SCRConfig) -> None:
        """Refuse options that cannot make this artifact, before any work is done (again for
        the command line, which checked while parsing; first for a QuantSpec built in code)."""
        self.check_calibration()
        if dtype != "float32":
            raise ScredgeError("--quantize needs a float32 export", received=f"--dtype {dtype}",
                               expected="--dtype float32 (the default)",
                               fix="weight-only quantization keeps float32 activations; "
                                   "drop --dtype")
        widths = {"d_model": config.d_model, "d_ff": config.d_ff}
        bad = {k: v for k, v in widths.items() if v % self.block_size}
        if bad:
            raise ScredgeError("the quantization block size does not divide the model width",
                               received=f"block {self.block_size}, {bad}",
                               expected="a block size dividing d_model and d_ff",
                               fix="pass --block-size 16 or 32 (a divisor of both widths)")


def parse_quantize_args(text: str | None, block_size: int | None, method: str | None,
                        dtype: str, calibration: str | Path | None = None) -> QuantSpec | None:
    """The command line's --quantize / --block-size / --quant-method / --calibration, checked
    before any model is loaded or anything written."""
    if text is None:
        given = [f for f, v in (("--block-size", block_size), ("--quant-method", method),
                                ("--calibration", calibration)) if v is not None]
        if given:
            raise ScredgeError("these options need --quantize", received=given,
                               expected="--quantize int8 or --quantize int4 with them")
        return None
    spec = QuantSpec.parse(text, block_size, method, calibration)
    if dtype != "float32":
        raise ScredgeError("--quantize needs a float32 export", received=f"--dtype {dtype}",
                           expected="--dtype float32 (the default)",
                           fix="weight-only quantization keeps float32 activations; "
                               "drop --dtype")
    return spec


def _quiet():
    """The quantizer logs every node at INFO; keep exports readable."""
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(
        logging.WARNING)


def materialize_tied_head(proto) -> None:
    """A tied output head reads the embedding through Transpose; give the head its own
    constant [D, V] copy so it can be quantized while the embedding (Gather) stays float."""
    numpy_helper = require("onnx").numpy_helper
    inits = {i.name: i for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    for node in proto.graph.node:
        if node.op_type != "MatMul" or node.input[1] in inits:
            continue
        src = producers.get(node.input[1])
        if src is None or src.op_type != "Transpose" or src.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(inits[src.input[0]])
        perm = [a.ints for a in src.attribute if a.name == "perm"]
        if weight.ndim != 2 or (perm and list(perm[0]) != [1, 0]):
            continue
        name = src.input[0] + ".head_T"
        proto.graph.initializer.append(numpy_helper.from_array(
            np.ascontiguousarray(weight.T), name))
        node.input[1] = name
    drop_unused(proto)


def weight_matmuls(proto) -> list[str]:
    """Names of the MatMul nodes with a constant 2-D weight: the matrices to quantize."""
    inits = {i.name: i for i in proto.graph.initializer}
    return [n.name for n in proto.graph.node if n.op_type == "MatMul"
            and n.input[1] in inits and len(inits[n.input[1]].dims) == 2]


def matrix_names(nodes: list[str]) -> list[str]:
    """`/model/layers.0/attn/q_proj/MatMul` -> `model.layers.0.attn.q_proj`; the head's
    MatMul (no module of its own when tied) is called `lm_head`."""
    out = []
    for name in nodes:
        path = name.strip("/").rsplit("/", 1)[0].replace("/", ".")
        out.append("lm_head" if path in ("model", "") else path)
    return out


def quantize_ort(proto, spec: QuantSpec, nodes: list[str]):
    """The onnxruntime form: `nodes` (MatMul) become MatMulNBits, quantized by onnxruntime."""
    require("onnxruntime")
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    _quiet()
    if spec.method == "hqq":
        algo = mnq.HQQWeightOnlyQuantConfig(block_size=spec.block_size, bits=spec.bits)
    else:
        algo = mnq.DefaultWeightOnlyQuantConfig(block_size=spec.block_size, is_symmetric=True,
                                                bits=spec.bits)
    quantizer = mnq.MatMulNBitsQuantizer(proto, nodes_to_include=list(nodes), algo_config=algo)
    with warnings.catch_warnings():  # HQQ hands torch a read-only NumPy view; harmless here
        warnings.simplefilter("ignore", category=UserWarning)
        quantizer.process()
    out = quantizer.model.model
    onnx = require("onnx")
    for node in out.graph.node:  # int8 activations in onnxruntime's CPU kernels
        if node.op_type == "MatMulNBits":
            kept = [x for x in node.attribute if x.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept)
            node.attribute.append(onnx.helper.make_attribute("accuracy_level",
                                                             ORT_ACCURACY_LEVEL))
    done = sum(n.op_type == "MatMulNBits" for n in out.graph.node)
    if done != len(nodes):
        raise ScredgeError("onnxruntime's quantizer skipped weight matrices",
                           received=f"{done} of {len(nodes)} quantized",
                           fix="report this with the model config used")
    return out


def _unpack(packed: np.ndarray, bits: int, n: int, k: int) -> np.ndarray:
    """MatMulNBits' B [N, k_blocks, blob] (uint8, low nibble first) -> unsigned [N, K]."""
    flat = packed.reshape(n, -1)
    if bits == 8:
        return flat[:, :k].astype(np.int32)
    lo, hi = flat & 0x0F, flat >> 4
    return np.stack([lo, hi], axis=-1).reshape(n, -1)[:, :k].astype(np.int32)


def _raw(w: np.ndarray, bits: int) -> bytes:
    """ONNX raw data of signed ints: int8 as is; int4 two per byte, first in the low nibble."""
    flat = w.astype(np.int8).ravel()
    if bits == 8:
        return flat.tobytes()
    nib = (flat.astype(np.uint8) & 0x0F)
    if nib.size % 2:
        nib = np.append(nib, np.uint8(0))
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes()


def positive_scales(w: np.ndarray, scales: np.ndarray, block: int, bits: int):
    """TensorRT takes only positive scales. onnxruntime's symmetric quantizer gives a block
    the sign of its largest-magnitude weight (that weight becomes -2^(bits-1)); such a block
    is flipped (ints and scale negated), the one value -2^(bits-1) saturating at
    2^(bits-1)-1. The TensorRT form is verified against the tier on its own for this."""
    sign = np.where(scales < 0, -1, 1).astype(np.int32)
    hi = (1 << (bits - 1)) - 1
    w = np.clip(w * np.repeat(sign, block, axis=0)[: w.shape[0]], -hi - 1, hi)
    return w, scales * sign


def to_dequantize_form(ort_proto):
    """The TensorRT form of a symmetric MatMulNBits graph: each MatMulNBits(A, Bq, scales)
    becomes DequantizeLinear(W int, scales, axis 0, block) -> MatMul(A, W), with
    W = q - 2^(bits-1) (MatMulNBits' implicit zero point), transposed to [K, N]."""
    onnx = require("onnx")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    proto = onnx.ModelProto()
    proto.CopyFrom(ort_proto)
    inits = {i.name: i for i in proto.graph.initializer}
    nodes, drop = [], set()
    for node in proto.graph.node:
        if node.op_type != "MatMulNBits":
            nodes.append(node)
            continue
        if len(node.input) > 3 and node.input[3]:
            raise ScredgeError("the TensorRT form needs symmetric weights (no zero points)",
                               received=node.name, fix="quantize with method rtn")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bits, block, k, n = attrs["bits"], attrs["block_size"], attrs["K"], attrs["N"]
        q = _unpack(numpy_helper.to_array(inits[node.input[1]]), bits, n, k)
        w = (q - (1 << (bits - 1))).T  # [K, N] signed
        scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, -1).T  # [K/block, N]
        w, scales = positive_scales(w, scales, block, bits)
        base = node.input[1].rsplit("_Q", 1)[0]
        qtype = onnx.TensorProto.INT4 if bits == 4 else onnx.TensorProto.INT8
        w_name, s_name = f"{base}_DQ_q{bits}", f"{base}_DQ_scales"
        proto.graph.initializer.extend([
            helper.make_tensor(w_name, qtype, list(w.shape), _raw(w, bits), raw=True),
            numpy_helper.from_array(np.ascontiguousarray(scales.astype(np.float32)), s_name)])
        drop.update(node.input[1:3])
        stem = node.name.removesuffix(f"_Q{bits}")
        nodes.append(helper.make_node("DequantizeLinear", [w_name, s_name], [w_name + "_out"],
                                      name=stem + "/DequantizeLinear", axis=0,
                                      block_size=block))
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name + "_out"],
                                      list(node.output), name=stem))
    keep = [i for i in proto.graph.initializer if i.name not in drop]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    if not any(n.domain == ORT_DOMAIN for n in nodes):
        kept = [o for o in proto.opset_import if o.domain != ORT_DOMAIN]
        del proto.opset_import[:]
        proto.opset_import.extend(kept)
    return proto


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
    `config`); the onnxruntime form with onnxruntime's fused kernels (ort_fusions.py).
    `gptq` needs `hessians` (export/gptq.py's input_hessians of the reference model)."""
    onnx = require("onnx")
    base = onnx.ModelProto()
    base.CopyFrom(float_proto)
    materialize_tied_head(base)
    nodes = weight_matmuls(base)

    def copy():
        p = onnx.ModelProto()
        p.CopyFrom(base)
        return p

    rtn_spec = QuantSpec(spec.bits, spec.block_size, "rtn")
    if spec.method == "gptq":
        if hessians is None:
            raise ScredgeError("gptq needs the calibration activations", received="none",
                               fix="pass hessians=input_hessians(model, calibration ids)")
        from scredge.export.gptq import apply_gptq

        ort = quantize_ort(copy(), rtn_spec, nodes)  # onnxruntime writes the nodes ...
        weights = {i.name: i for i in base.graph.initializer}
        numpy_helper = onnx.numpy_helper
        apply_gptq(ort, lambda name: numpy_helper.to_array(weights[name]), hessians,
                   spec.bits, spec.block_size)  # ... GPTQ chooses their numbers
        rtn, trt_method = ort, "gptq"  # symmetric: the TensorRT form holds GPTQ's numbers
    else:
        ort = quantize_ort(copy(), spec, nodes)
        rtn = ort if spec.method == "rtn" else quantize_ort(copy(), rtn_spec, nodes)
        trt_method = "rtn"
    trt = to_dequantize_form(rtn)  # a copy: `ort` may be `rtn`, and is rewritten next
    for p in (ort, trt):
        onnx.checker.check_model(p)
    # after the checker: SimplifiedLayerNormalization is onnxruntime's, in the ONNX domain,
    # which the checker does not know; onnxruntime loads and the tier runs the result
    fusions = fuse_for_onnxruntime(ort, config)
    return QuantizedGraphs(ort, trt, matrix_names(nodes), trt_method, fusions)


QUANTIZER = "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer"


def config_section(spec: QuantSpec, graphs: QuantizedGraphs, ort_file: str,
                   calibration: dict | None = None) -> dict:
    """config.json's `quantization` (SCR_SPEC section 4): what, how, and which graph each
    backend reads; `calibration` is the calibration text's record (gptq)."""
    return {
        "bits": spec.bits, "block_size": spec.block_size, "method": spec.method,
        "symmetric": spec.method != "hqq", "weights": "weight-only",
        "matrices": graphs.matrices,
        "float": ["embeddings", "norms", "Realign inputs (float32)"],
        "quantizer": QUANTIZER if spec.method != "gptq"
        else f"{QUANTIZER} (nodes), scredge.export.gptq (integers and scales)",
        **({"calibration": calibration} if calibration is not None else {}),
        "graphs": {
            "ort": {"file": ort_file, "format": ORT_FORMAT, "method": spec.method,
                    "fused": asdict(graphs.fusions), "min_onnxruntime": MIN_ONNXRUNTIME},
            "trt": {"file": TRT_ONNX_FILE, "format": TRT_FORMAT, "method": graphs.trt_method},
        },
    }
