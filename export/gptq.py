"""GPTQ (Frantar et al. 2022, arXiv:2210.17323): the activation-aware method of
`--quant-method gptq`, run on the reference model with a calibration text.

Why our own code: of the installable quantizers none runs an activation-aware method on
this model on a CPU. onnxruntime's bundled GPTQ returns round-to-nearest unchanged
(benchmarks/ort_gptq_check.py); torchao's GPTQ asserts a CUDA device (and its int4 path
needs `mslk`); auto-round, GPTQModel and llm-compressor drive a Hugging Face model class
through its own calibration loop; NVIDIA's modelopt pins onnxruntime-gpu. What is ours is
the algorithm only; the MatMulNBits nodes it fills are laid out as onnxruntime's quantizer
writes them (export/quantize.py).

GPTQ runs on any grid of export/qgrid.py: onnxruntime's symmetric grid (a block's scale is
its largest-magnitude weight over -2^(bits-1)), where with a diagonal Hessian it reproduces
onnxruntime's integers and scales byte for byte (tested), and the asymmetric grids with
zero points (integer or float) of the onnxruntime form. A block's scale and zero point are
set from its weights as updated when GPTQ reaches its first column.

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
from scredge.export.qgrid import Grid
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
BUILTIN_CALIBRATION_BYTES = 60_000  # the training part's tail (~15k tokens for a BPE)
BUILTIN_CALIBRATION_NAME = "built-in: prose corpus, training part (last 60,000 bytes)"


@dataclass(frozen=True)
class Calibration:
    """The calibration text, in the model's token ids, and where it came from."""

    ids: np.ndarray  # [n] int64
    source: dict  # config.json's record: file name, sha256, bytes, tokens

    @classmethod
    def load(cls, path: Path, tokenizer: TokenizerFiles | None, vocab_size: int) -> Calibration:
        """Read and check `path` (see `calibration_text`), encoded with the artifact's
        tokenizer, or as bytes for a byte-level model."""
        return cls.from_text(calibration_text(path), Path(path).name, tokenizer, vocab_size)

    @classmethod
    def builtin(cls, tokenizer: TokenizerFiles | None, vocab_size: int) -> Calibration:
        """The default calibration text: the tail of the prose corpus's training part
        (export.heldout.training_text; the held-out text is never part of it)."""
        from scredge.export.heldout import training_text

        return cls.from_text(training_text()[-BUILTIN_CALIBRATION_BYTES:],
                             BUILTIN_CALIBRATION_NAME, tokenizer, vocab_size)

    @classmethod
    def from_text(cls, data: bytes, name: str, tokenizer: TokenizerFiles | None,
                  vocab_size: int) -> Calibration:
        """`data` (checked text) in the model's token ids."""
        path = name
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
        return cls(ids, {"file": name, "sha256": hashlib.sha256(data).hexdigest(),
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
    """w [N,K], hessian [K,K] -> signed integers [N,K] (int8) and float32 scales
    [N, K/block] on onnxruntime's symmetric grid (`gptq_grid` on Grid(bits, "sym"))."""
    q, s, z = gptq_grid(w, hessian, Grid(bits, "sym"), block, percdamp)
    return (q.astype(np.int16) - z[:, :1].astype(np.int16)).astype(np.int8), s


def gptq_grid(w: np.ndarray, hessian: np.ndarray, grid: Grid, block: int,
              percdamp: float = PERCDAMP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """w [N,K] (one output row per line, K the reduced axis), hessian [K,K] -> unsigned
    integers q [N,K] (uint8), scales and zero points [N, K/block] (float32) on `grid`
    (export/qgrid.py), chosen column by column with each column's rounding error pushed onto
    the columns not yet quantized (GPTQ, Algorithm 1, with lazy batch updates). A block's
    scale and zero point come from its weights as updated when its first column is reached."""
    torch = require("torch")
    W = torch.from_numpy(np.asarray(w, np.float64)).clone()  # [N,K]
    N, K = W.shape
    if K % block or hessian.shape != (K, K):
        raise ScredgeError("GPTQ got mismatched shapes", received=f"W {tuple(W.shape)}, "
                           f"H {tuple(hessian.shape)}, block {block}")
    U, dead = _inverse_hessian_factor(hessian, percdamp)
    W[:, dead] = 0
    Q = np.zeros((N, K), np.uint8)
    S = np.zeros((N, K // block), np.float32)
    Z = np.zeros((N, K // block), np.float32)
    lazy = max(LAZY_COLUMNS, block)
    for i1 in range(0, K, lazy):
        i2 = min(i1 + lazy, K)
        W1 = W[:, i1:i2].clone()  # [N,b], updated in place as its columns are quantized
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        s = z = None
        for i in range(i2 - i1):
            col = i1 + i
            if col % block == 0:  # this block's grid, from its weights as updated so far
                s, z = grid.params(W1[:, i:i + block].numpy())
                S[:, col // block], Z[:, col // block] = s, z
            x = W1[:, i]
            q = grid.quantize(x.numpy()[:, None], s, z)[:, 0]
            Q[:, col] = q
            err = (x - torch.from_numpy(grid.dequantize(q, s, z))) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return Q, S, Z


def _inverse_hessian_factor(hessian: np.ndarray, percdamp: float):
    """(U, dead): the upper Cholesky factor of the damped Hessian's inverse (Hinv = U^T U)
    and the inputs that were always zero (any weight will do for them)."""
    torch = require("torch")
    H = torch.from_numpy(np.asarray(hessian, np.float64)).clone()  # [K,K]
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    H.diagonal().add_(percdamp * torch.diagonal(H).mean())
    try:
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)),
                                  upper=True)
    except torch.linalg.LinAlgError as exc:
        raise ScredgeError("GPTQ: the calibration Hessian is not positive definite",
                           received=str(exc).splitlines()[0],
                           fix="give a longer, more varied calibration text") from exc
    return U, dead.numpy()


def pack_nbits(q: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Signed integers [N,K] -> MatMulNBits' B [N, K/block, blob] uint8 (stored unsigned,
    offset 2^(bits-1); 4-bit: two per byte, the first in the low nibble)."""
    n, k = q.shape
    u = (q.astype(np.int32) + (1 << (bits - 1))).astype(np.uint8)
    if bits == 4:
        u = u[:, 0::2] | (u[:, 1::2] << 4)
    return np.ascontiguousarray(u.reshape(n, k // block, -1))


def by_matrix(hessians: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """input_hessians' per-scope arrays keyed by matrix name (quantize.matrix_names')."""
    from scredge.export.quantize import matrix_name

    return {matrix_name(scope): h for scope, h in hessians.items()}
