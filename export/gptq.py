"""GPTQ (Frantar et al. 2022, arXiv:2210.17323): the activation-aware method of
`--quant-method gptq`, run on the reference model with a calibration text.

Why our own code: of the installable quantizers none runs an activation-aware method on
this model on a CPU. onnxruntime's bundled GPTQ returns round-to-nearest unchanged
(benchmarks/ort_gptq_check.py); torchao's GPTQ asserts a CUDA device (and its int4 path
needs `mslk`); auto-round, GPTQModel and llm-compressor drive a Hugging Face model class
through its own calibration loop; NVIDIA's modelopt pins onnxruntime-gpu. What is ours is
the algorithm only: onnxruntime's quantizer still writes every MatMulNBits node (names,
attributes, layout), and GPTQ then replaces each node's integers and scales.

The grid is exactly onnxruntime's symmetric round-to-nearest grid (a block's scale is its
largest-magnitude weight over -2^(bits-1), integers in [-2^(bits-1), 2^(bits-1) - 1]), so
with a diagonal Hessian GPTQ reproduces onnxruntime's integers and scales byte for byte
(tested), and the TensorRT form is derived from the result as for `rtn`.

Activations come from the float32 reference over the calibration text, every matrix seeing
the float model's inputs (not the quantized earlier layers'), as torchao's GPTQ does by
default. Per distinct matrix input a K x K float32 Hessian (4 K^2 bytes) is held until
the end; each matrix's GPTQ runs in float64.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scredge.contract import TOKENIZER_FILE
from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.export.graph import scope_name
from scredge.files import read_bytes_limited
from scredge.limits import MAX_CALIBRATION_BYTES
from scredge.tokenizer_files import TokenizerFiles

MIN_CALIBRATION_TOKENS = 2048
MAX_CALIBRATION_TOKENS = 32768  # more only adds time; the Hessians are averages
CALIBRATION_SEQ = 512  # tokens per calibration sequence, each from an empty state
CALIBRATION_BATCH = 4
PERCDAMP = 0.01  # GPTQ's damping: this fraction of the mean Hessian diagonal
LAZY_COLUMNS = 128  # columns updated together before the rest of the matrix (GPTQ's "B")
HEAD_SCOPE = "/model"  # the output head's MatMul: its input is the final norm's output
_PROBE_BYTES = 256
MAX_HELDOUT_OVERLAP = 0.5


@dataclass(frozen=True)
class Calibration:
    """The calibration text, in the model's token ids, and where it came from."""

    ids: np.ndarray  # [n] int64
    source: dict  # config.json's record: file name, sha256, bytes, tokens

    @classmethod
    def load(cls, path: Path, tokenizer: TokenizerFiles | None, vocab_size: int) -> Calibration:
        """Read and check `path` (see `calibration_text`), encoded with the artifact's
        tokenizer, or as bytes for a byte-level model."""
        data = calibration_text(path)
        if tokenizer is None:
            if vocab_size < 256:
                raise ScredgeError("a calibration text needs a tokenizer or byte ids",
                                   received=f"vocab {vocab_size}, no {TOKENIZER_FILE}",
                                   expected=f"vocab_size >= 256 or a {TOKENIZER_FILE}")
            ids = np.frombuffer(data, np.uint8).astype(np.int64)
        else:
            ids = tokenizer.encode_text(data)
        if len(ids) < MIN_CALIBRATION_TOKENS:
            _too_short(path, f"{len(ids)} tokens")
        ids = ids[:MAX_CALIBRATION_TOKENS]
        return cls(ids, {"file": Path(path).name, "sha256": hashlib.sha256(data).hexdigest(),
                         "bytes": len(data), "tokens": int(len(ids)),
                         "tokenizer": "bytes" if tokenizer is None else TOKENIZER_FILE})


def calibration_text(path: Path) -> bytes:
    """The calibration file's bytes, refused unless it is UTF-8 text, long enough, and not
    the held-out text the quantized tier scores."""
    from scredge.export.heldout import validation_text

    data = read_calibration_text(path)
    check_disjoint(data, validation_text(), path)
    return data


def read_calibration_text(path: Path) -> bytes:
    """The bytes of a UTF-8 text file, refused with a reason otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ScredgeError("the calibration text is a folder", received=str(path),
                           expected="one UTF-8 text file",
                           fix="join the texts into one file and pass that to --calibration")
    if not path.is_file():
        raise ScredgeError("calibration text not found", received=str(path),
                           expected="a UTF-8 text file", fix="check the path given to "
                                                             "--calibration")
    data = read_bytes_limited(path, "the calibration text", MAX_CALIBRATION_BYTES)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScredgeError("the calibration text is not UTF-8 text",
                           received=f"{path}: invalid byte at offset {exc.start}",
                           expected="a UTF-8 text file",
                           fix="convert it to UTF-8 text (calibration runs on text)") from exc
    if b"\x00" in data:
        raise ScredgeError("the calibration text looks binary (it contains NUL bytes)",
                           received=str(path), expected="a UTF-8 text file")
    if len(data) < MIN_CALIBRATION_TOKENS:  # no tokenizer makes more tokens than bytes
        _too_short(path, f"{len(data)} bytes")
    return data


def _too_short(path: Path, received: str):
    raise ScredgeError("the calibration text is too short", received=f"{path}: {received}",
                       expected=f">= {MIN_CALIBRATION_TOKENS} tokens",
                       fix="give a longer text like the model will see")


def check_disjoint(data: bytes, heldout_text: bytes, path: Path) -> None:
    """Refuse a calibration text that holds the held-out text the tier scores (the tier
    would judge the quantization on what it was fitted to). Judged by 256-byte pieces: the
    prose corpus repeats some of its paragraphs, so a few matches are expected even from
    its training part (~12 %); the held-out text itself, or the whole corpus, matches all."""
    probes = [heldout_text[s:s + _PROBE_BYTES]
              for s in range(0, len(heldout_text) - _PROBE_BYTES + 1, _PROBE_BYTES)]
    found = sum(p in data for p in probes)
    if probes and found > MAX_HELDOUT_OVERLAP * len(probes):
        raise ScredgeError("the calibration text contains the held-out text",
                           received=f"{path} holds {found} of the {len(probes)} "
                                    f"{_PROBE_BYTES}-byte pieces of the held-out text (the "
                                    "prose corpus's last 5 %)",
                           expected=f"at most {MAX_HELDOUT_OVERLAP:.0%}: text the quantized "
                                    "tier does not score",
                           fix="leave the prose corpus's last 5 % out of it")


# ---- activations ------------------------------------------------------------------------
def input_hessians(model, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Per graph scope of a weight MatMul: H = X^T X / n (float32 [K,K]) of the inputs the
    float32 reference gives it over `ids`, cut into sequences from an empty state. Matrices
    fed the same tensor (q/k/v, gate/up) share one array."""
    torch = require("torch")
    sums: dict[str, object] = {}
    counts: dict[str, int] = {}
    # id(input tensor) -> (the scope that accumulated it, a weak reference: an id can be
    # reused once its tensor is freed, so only a live match counts as the same input)
    seen: dict[int, tuple[str, weakref.ref]] = {}
    alias: dict[str, str] = {}

    def accumulate(scope: str, x) -> None:
        owner = seen.get(id(x))
        if owner is not None and owner[1]() is x:
            alias[scope] = owner[0]
            return
        seen[id(x)] = (scope, weakref.ref(x))
        x2 = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        if scope in sums:
            sums[scope].addmm_(x2.T, x2)
        else:
            sums[scope] = x2.T @ x2
        counts[scope] = counts.get(scope, 0) + x2.shape[0]

    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            scope = scope_name(name)
            handles.append(mod.register_forward_pre_hook(
                lambda m, args, s=scope: accumulate(s, args[0])))
    handles.append(model.model.norm.register_forward_hook(
        lambda m, args, out: accumulate(HEAD_SCOPE, out)))
    seq = CALIBRATION_SEQ
    n = len(ids) // seq * seq or len(ids)
    rows = torch.from_numpy(np.ascontiguousarray(ids[:n])).reshape(-1, min(seq, n))
    try:
        with torch.no_grad():
            for b in range(0, len(rows), CALIBRATION_BATCH):
                batch = rows[b:b + CALIBRATION_BATCH]
                positions = torch.arange(batch.shape[1]).expand_as(batch)
                seen.clear()
                model(batch, positions)
    finally:
        for h in handles:
            h.remove()
    out = {s: (sums[s] / counts[s]).numpy() for s in sums}
    for s, owner in alias.items():
        out[s] = out[owner]
    return out


# ---- the algorithm ----------------------------------------------------------------------
def gptq_quantize(w: np.ndarray, hessian: np.ndarray, bits: int, block: int,
                  percdamp: float = PERCDAMP) -> tuple[np.ndarray, np.ndarray]:
    """w [N,K] (one output row per line, K the reduced axis), hessian [K,K] -> signed
    integers [N,K] (int8) and float32 scales [N, K/block] on onnxruntime's symmetric grid,
    chosen column by column with each column's rounding error pushed onto the columns not
    yet quantized (GPTQ, Algorithm 1, with lazy batch updates)."""
    torch = require("torch")
    W = torch.from_numpy(np.asarray(w, np.float64)).clone()  # [N,K]
    H = torch.from_numpy(np.asarray(hessian, np.float64)).clone()  # [K,K]
    N, K = W.shape
    if K % block or H.shape != (K, K):
        raise ScredgeError("GPTQ got mismatched shapes", received=f"W {tuple(W.shape)}, "
                           f"H {tuple(H.shape)}, block {block}")
    dead = torch.diagonal(H) == 0  # inputs that were always zero: any weight will do
    H[dead, dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(percdamp * torch.diagonal(H).mean())
    try:
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)),
                                  upper=True)  # [K,K], Hinv = U^T U
    except torch.linalg.LinAlgError as exc:
        raise ScredgeError("GPTQ: the calibration Hessian is not positive definite",
                           received=str(exc).splitlines()[0],
                           fix="give a longer, more varied calibration text") from exc
    half = 1 << (bits - 1)
    Q = torch.zeros((N, K), dtype=torch.int8)
    S = torch.zeros((N, K // block), dtype=torch.float32)
    lazy = max(LAZY_COLUMNS, block)
    for i1 in range(0, K, lazy):
        i2 = min(i1 + lazy, K)
        W1 = W[:, i1:i2].clone()  # [N,b], updated in place as its columns are quantized
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        scale = safe = None
        for i in range(i2 - i1):
            col = i1 + i
            if col % block == 0:  # this block's scale, from its weights as updated so far
                g = W1[:, i:i + block]
                peak = g.gather(1, g.abs().argmax(1, keepdim=True))[:, 0]
                s32 = peak.to(torch.float32) / -half  # onnxruntime's grid, in float32
                S[:, col // block] = s32
                scale = s32.to(torch.float64)
                safe = torch.where(scale == 0, torch.ones_like(scale), scale)
            x = W1[:, i]
            q = torch.clamp(torch.round(x / safe), -half, half - 1)
            q = torch.where(scale == 0, torch.zeros_like(q), q)
            Q[:, col] = q.to(torch.int8)
            err = (x - q * scale) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return Q.numpy(), S.numpy()


def pack_nbits(q: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Signed integers [N,K] -> MatMulNBits' B [N, K/block, blob] uint8 (stored unsigned,
    offset 2^(bits-1); 4-bit: two per byte, the first in the low nibble)."""
    n, k = q.shape
    u = (q.astype(np.int32) + (1 << (bits - 1))).astype(np.uint8)
    if bits == 4:
        u = u[:, 0::2] | (u[:, 1::2] << 4)
    return np.ascontiguousarray(u.reshape(n, k // block, -1))


def apply_gptq(ort_proto, float_weight, hessians: dict[str, np.ndarray], bits: int,
               block: int) -> None:
    """Replace the integers and scales of every MatMulNBits node in `ort_proto` (onnxruntime's
    symmetric round-to-nearest output, in place) by GPTQ's. `float_weight(name)` gives the
    original weight initializer `name` as a [K,N] float array. A node whose scope has no
    Hessian is refused."""
    onnx = require("onnx")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    inits = {i.name: i for i in ort_proto.graph.initializer}
    for node in ort_proto.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (attrs["bits"], attrs["block_size"]) != (bits, block):
            raise ScredgeError("unexpected MatMulNBits node", received=node.name,
                               expected=f"bits {bits}, block {block}")
        scope = node.name.rsplit("/", 1)[0]
        if scope not in hessians:
            raise ScredgeError("no calibration activations for a weight matrix",
                               received=node.name, expected=f"one of {sorted(hessians)}",
                               fix="report this with the model config used")
        w = float_weight(node.input[1].rsplit("_Q", 1)[0])  # [K,N]
        q, s = gptq_quantize(w.T, hessians[scope], bits, block)
        b_init, s_init = inits[node.input[1]], inits[node.input[2]]
        packed = pack_nbits(q, bits, block).reshape(tuple(b_init.dims))
        b_init.CopyFrom(numpy_helper.from_array(packed, b_init.name))
        s_init.CopyFrom(numpy_helper.from_array(
            s.astype(np.float32).reshape(tuple(s_init.dims)), s_init.name))
