"""Weight-only int8 / int4 graphs (SCR_SPEC section 4, v3: a precision per matrix).

The float graph's weight matrices (every MatMul whose second input is a constant: q, k, v,
o, gate, up, down, SCR `proj`, the output head) are each held at the precision a plan gives
them (export/mixed.py): int4, int8 or float. Integers, scales and zero points come from
export/qgrid.py (round-to-nearest) or export/gptq.py (GPTQ), per block of `block_size`
rows; norms and every `Realign` input stay float32; a tied embedding may read the quantized
head's table (`share_tied_embedding`).

Two graphs come out, each with its own plan (each must pass the tier on its own):
- the onnxruntime form: `com.microsoft.MatMulNBits`, laid out as onnxruntime's quantizer
  writes it (names, packing), int4 on the grid the spec names: asymmetric with float zero
  points by default (`asym_float`; chosen by measurement, docs/quantization-quality.md),
  or with integer zero points (`asym`), or symmetric; int8 symmetric;
- the TensorRT form: standard blocked `DequantizeLinear` (opset 21, INT4/INT8, no zero
  point: TensorRT's weight-only GEMMs take symmetric weights) feeding the original
  `MatMul`, rewritten from a symmetric MatMulNBits graph of its plan (positive scales only,
  see `positive_scales`). A matrix that needs more than symmetric int4 is int8 there.

Methods: `rtn` (round-to-nearest), `gptq` (activation-aware, with a calibration text),
`hqq` (onnxruntime's own half-quadratic quantizer, int4, uniform; its TensorRT form `rtn`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scredge.config import SCRConfig
from scredge.contract import ORT_DOMAIN, TRT_ONNX_FILE  # noqa: F401 (imported from here)
from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.export.graph_match import drop_unused
from scredge.export.qgrid import GRIDS

QUANT_BITS = (8, 4)
QUANT_METHODS = ("rtn", "hqq", "gptq")
CALIBRATED_METHODS = ("gptq",)
# the command line's defaults, chosen by measurement (docs/quantization-quality.md)
DEFAULT_METHOD = {8: "rtn", 4: "rtn"}
DEFAULT_GRID = "asym_float"
MIXED_CHOICES = ("auto", "off")
DEFAULT_BLOCK_SIZE = 32
QUANT_OPSET = 21  # blocked DequantizeLinear and INT4 tensors
# MatMulNBits' accuracy_level 4: onnxruntime's CPU kernels quantize activations to int8 per
# block (what onnxruntime-genai's builder sets); at the default (0) its int8 weights run a
# float32 path measured 3.5x slower than float32 weights on `tiny`. The quantized tier at
# export judges the result, activations included.
ORT_ACCURACY_LEVEL = 4
# MatMulNBits' activations (--activations): int8 is accuracy_level 4, float32 level 0
ACTIVATIONS = ("int8", "float32")
ORT_FORMAT = "MatMulNBits"
TRT_FORMAT = "DequantizeLinear+MatMul"
QUANTIZER = "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer"
HEAD = "lm_head"  # the output head's matrix name
TIED_HEAD_SUFFIX = ".head_T"  # the tied head's own [D, V] copy (materialize_tied_head)
_HQQ_BITS = (4,)  # onnxruntime's CPU MatMulNBits refuses 8-bit weights with float zero points


@dataclass(frozen=True)
class QuantSpec:
    bits: int
    block_size: int = DEFAULT_BLOCK_SIZE
    method: str = "rtn"
    calibration: Path | None = None  # a calibration text file (None: the built-in one)
    mixed: bool = False  # measured mixed precision (int4 only): promote until the tier passes
    grid: str | None = None  # the onnxruntime form's int4 grid (qgrid.GRIDS); None: default
    quantize_embedding: bool = False  # a tied embedding shares the quantized head's table
    activations: str | None = None  # MatMulNBits' activations (ACTIVATIONS); None: default

    @classmethod
    def parse(cls, text: str | int, block_size: int | None, method: str | None,
              calibration: str | Path | None = None, mixed: str | None = None,
              grid: str | None = None, embedding: str | None = None,
              activations: str | None = None) -> QuantSpec:
        """`int8` / `int4` (or 8 / 4) from the command line, checked, with the command line's
        defaults (DEFAULT_METHOD; measured mixed precision for int4); a calibration file is
        read and checked here too (the model is not needed for that)."""
        t = str(text).lower().removeprefix("int")
        if not t.isdigit() or int(t) not in QUANT_BITS:
            raise ScredgeError("unknown quantization", received=repr(text),
                               expected="int8 or int4")
        bits = int(t)
        if mixed not in (None, *MIXED_CHOICES):
            raise ScredgeError("unknown --mixed-precision", received=repr(mixed),
                               expected=f"one of {list(MIXED_CHOICES)}")
        method = method or DEFAULT_METHOD[bits]
        spec = cls(bits, DEFAULT_BLOCK_SIZE if block_size is None else block_size, method,
                   None if calibration is None else Path(calibration),
                   mixed=bits == 4 and method != "hqq" and (mixed or "auto") == "auto",
                   grid=grid, quantize_embedding=(embedding or "shared") == "shared",
                   activations=activations)
        if activations not in (None, *ACTIVATIONS):
            raise ScredgeError("unknown --activations", received=repr(activations),
                               expected=f"one of {list(ACTIVATIONS)}")
        if spec.method not in QUANT_METHODS:
            raise ScredgeError("unknown quantization method", received=repr(spec.method),
                               expected=f"one of {list(QUANT_METHODS)}")
        if spec.mixed and spec.method == "hqq":
            raise ScredgeError("--mixed-precision auto is not offered with hqq",
                               received="--quant-method hqq",
                               expected="--mixed-precision off with hqq, or method gptq / rtn")
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

    @property
    def calibrated(self) -> bool:
        """Whether the export runs the reference over a calibration text (GPTQ's Hessians,
        the mixed-precision plan's sensitivities)."""
        return self.method in CALIBRATED_METHODS or self.mixed

    def accuracy_level(self, folded: bool) -> int:
        """MatMulNBits' accuracy_level in the onnxruntime form: `folded`, an int4 matrix on
        float zero points folded into a correction (plan_graphs._zero_point_correction),
        defaults to float32 activations (level 0: exactly the numbers its grid gives; int8
        ones kept the tier on SmolLM2 but changed its greedy chat answers); every other
        matrix to int8 activations (level 4, what onnxruntime-genai's builder sets; its
        int8 weights at level 0 ran 3.5x slower than float32 on `tiny`). `--activations`
        chooses for all; the quantized tier judges the result either way."""
        if self.activations is None:
            return 0 if folded else ORT_ACCURACY_LEVEL
        return ORT_ACCURACY_LEVEL if self.activations == "int8" else 0

    @property
    def int4_grid(self) -> str:
        """The onnxruntime form's int4 grid (the TensorRT form's is always symmetric)."""
        if self.method == "hqq":
            return "asym_float"
        return self.grid or DEFAULT_GRID

    def check_calibration(self) -> None:
        """A calibration file must be readable and not the held-out text; an export that
        calibrates nothing takes none. Without a file, a calibrated export uses the prose
        corpus's training part (export.heldout.training_text)."""
        if self.grid is not None and self.grid not in GRIDS:
            raise ScredgeError("unknown int4 grid", received=repr(self.grid),
                               expected=f"one of {list(GRIDS)}")
        if not self.calibrated and self.calibration is not None:
            raise ScredgeError("--calibration is for an activation-aware method or measured "
                               "mixed precision",
                               received=f"--quant-method {self.method} with --calibration",
                               expected=f"--quant-method {' or '.join(CALIBRATED_METHODS)}, "
                                        "or --quantize int4 with --mixed-precision auto",
                               fix="add --quant-method gptq, or drop --calibration")
        if self.calibration is not None:
            from scredge.export.gptq import calibration_text

            calibration_text(self.calibration)

    def check(self, dtype: str, config: SCRConfig) -> None:
        """Refuse options that cannot make this artifact, before any work is done (again for
        the command line, which checked while parsing; first for a QuantSpec built in code)."""
        self.check_calibration()
        check_float32(dtype)
        widths = {"d_model": config.d_model, "d_ff": config.d_ff}
        bad = {k: v for k, v in widths.items() if v % self.block_size}
        if bad:
            raise ScredgeError("the quantization block size does not divide the model width",
                               received=f"block {self.block_size}, {bad}",
                               expected="a block size dividing d_model and d_ff",
                               fix="pass --block-size 16 or 32 (a divisor of both widths)")


def check_float32(dtype: str) -> None:
    """Weight-only quantization keeps float32 activations: refuse another export dtype."""
    if dtype != "float32":
        raise ScredgeError("--quantize needs a float32 export", received=f"--dtype {dtype}",
                           expected="--dtype float32 (the default)",
                           fix="weight-only quantization keeps float32 activations; "
                               "drop --dtype")


def parse_quantize_args(text: str | None, block_size: int | None, method: str | None,
                        dtype: str, calibration: str | Path | None = None,
                        mixed: str | None = None, grid: str | None = None,
                        embedding: str | None = None,
                        activations: str | None = None) -> QuantSpec | None:
    """The command line's --quantize / --block-size / --quant-method / --calibration, checked
    before any model is loaded or anything written."""
    if text is None:
        given = [f for f, v in (("--block-size", block_size), ("--quant-method", method),
                                ("--calibration", calibration), ("--mixed-precision", mixed),
                                ("--int4-grid", grid), ("--embedding", embedding),
                                ("--activations", activations))
                 if v is not None]
        if given:
            raise ScredgeError("these options need --quantize", received=given,
                               expected="--quantize int8 or --quantize int4 with them")
        return None
    spec = QuantSpec.parse(text, block_size, method, calibration, mixed, grid, embedding,
                           activations)
    check_float32(dtype)
    return spec


def _quiet():
    """The quantizer logs every node at INFO; keep exports readable."""
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(
        logging.WARNING)


def materialize_tied_head(proto, tie=None) -> None:
    """A tied output head reads the embedding through Transpose; give the head its own
    constant [D, V] copy so it can be quantized while the embedding (Gather) stays float.
    `tie(proto, table, name)`, when given, adds that initializer instead (a graph whose
    weights are not loaded: export/quant_store.py)."""
    numpy_helper = require("onnx").numpy_helper
    inits = {i.name: i for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    for node in proto.graph.node:
        if node.op_type != "MatMul" or node.input[1] in inits:
            continue
        src = producers.get(node.input[1])
        if src is None or src.op_type != "Transpose" or src.input[0] not in inits:
            continue
        table = inits[src.input[0]]
        perm = [a.ints for a in src.attribute if a.name == "perm"]
        if len(table.dims) != 2 or (perm and list(perm[0]) != [1, 0]):
            continue
        name = src.input[0] + TIED_HEAD_SUFFIX
        if tie is not None:
            tie(proto, table, name)
        else:
            proto.graph.initializer.append(numpy_helper.from_array(
                np.ascontiguousarray(numpy_helper.to_array(table).T), name))
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
    return [matrix_name(name.strip("/").rsplit("/", 1)[0]) for name in nodes]


def matrix_name(scope: str) -> str:
    """A module scope (`/model/layers.0/attn/q_proj`) -> its matrix's name
    (`model.layers.0.attn.q_proj`); the head's scope (`/model`) -> `lm_head`."""
    path = scope.strip("/").replace("/", ".")
    return HEAD if path in ("model", "") else path


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
            node.attribute.append(onnx.helper.make_attribute(
                "accuracy_level", spec.accuracy_level(folded=False)))
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


def to_dequantize_form(ort_proto, read=None, hold=None):
    """The TensorRT form of a symmetric MatMulNBits graph: each MatMulNBits(A, Bq, scales)
    becomes DequantizeLinear(W int, scales, axis 0, block) -> MatMul(A, W), with
    W = q - 2^(bits-1) (MatMulNBits' implicit zero point), transposed to [K, N]. `read` /
    `hold`: how an initializer's value is read / a new one made (export/quant_store.py's
    FloatSource keeps them beside the graph; default: in it)."""
    onnx = require("onnx")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    read = read or numpy_helper.to_array
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
        q = _unpack(read(inits[node.input[1]]), bits, n, k)
        w = (q - (1 << (bits - 1))).T  # [K, N] signed
        scales = read(inits[node.input[2]]).reshape(n, -1).T  # [K/block, N]
        w, scales = positive_scales(w, scales, block, bits)
        base = node.input[1].rsplit("_Q", 1)[0]
        qtype = onnx.TensorProto.INT4 if bits == 4 else onnx.TensorProto.INT8
        w_name, s_name = f"{base}_DQ_q{bits}", f"{base}_DQ_scales"
        scales = np.ascontiguousarray(scales.astype(np.float32))
        proto.graph.initializer.extend([
            helper.make_tensor(w_name, qtype, list(w.shape), _raw(w, bits), raw=True)
            if hold is None else hold(np.frombuffer(_raw(w, bits), np.uint8), w_name, qtype,
                                      list(w.shape)),
            numpy_helper.from_array(scales, s_name) if hold is None else hold(scales, s_name)])
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
