"""The integer grids of weight-only quantization (SCR_SPEC v3, section 4), as NumPy.

A weight matrix w [N, K] (one output row per line, K the reduced axis, blocks of `block`
along K) is stored as unsigned integers q in [0, 2^bits - 1], a scale s and a zero point z
per block: w ~ (q - z) * s, exactly what `com.microsoft.MatMulNBits` computes.

- `sym`: onnxruntime's symmetric grid (its quantizer's, byte for byte): s = the block's
  largest-magnitude weight / -2^(bits-1), z = 2^(bits-1) implied (no zero-point input).
  The only grid TensorRT's weight-only GEMMs take.
- `asym`: onnxruntime's asymmetric grid: s = (max(w, 0) - min(w, 0)) / (2^bits - 1),
  z = round(-min / s), an integer (uint8 zero points, packed like the weights).
- `asym_float`: min-max with a float zero point: s = (max - min) / (2^bits - 1),
  z = -min / s, any float (MatMulNBits takes float zero points for 4-bit weights, as
  onnxruntime's HQQ writes them): the block's minimum and maximum are represented exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scredge.errors import ScredgeError

GRIDS = ("sym", "asym", "asym_float")


@dataclass(frozen=True)
class Grid:
    bits: int
    kind: str = "sym"

    def __post_init__(self):
        if self.kind not in GRIDS or self.bits not in (4, 8):
            raise ScredgeError("unknown quantization grid", received=f"{self.kind} {self.bits}",
                               expected=f"bits 4 or 8, one of {list(GRIDS)}")

    @property
    def symmetric(self) -> bool:
        return self.kind == "sym"

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    def params(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scale and zero point [N] of each row of the block `g` [N, block] (float64 math,
        scales rounded to float32 as stored)."""
        g = np.asarray(g, np.float64)
        half = 1 << (self.bits - 1)
        if self.kind == "sym":
            peak = g[np.arange(g.shape[0]), np.abs(g).argmax(1)]
            s = _f32(peak / -half)
            return s, np.full_like(s, half)
        lo, hi = g.min(1), g.max(1)
        if self.kind == "asym":
            lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
        s = _f32((hi - lo) / self.qmax)
        if self.kind == "asym":
            z = np.round(-lo / np.where(s == 0, 1, s))
            return s, np.where(s == 0, half, np.clip(z, 0, self.qmax))
        s = np.where(s == 0, 1.0, s)  # a constant block: q = 0, z = -value, exact
        return s, _f32(-lo / s)

    def quantize(self, x: np.ndarray, s: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Integers (as float64) of `x` [N, b] given per-row s, z [N]."""
        s2, z2 = s[:, None], z[:, None]
        q = np.clip(np.round(x / np.where(s2 == 0, 1, s2) + z2), 0, self.qmax)
        return q if self.kind == "asym_float" else np.where(s2 == 0, z2, q)

    @staticmethod
    def dequantize(q, s, z):
        return (q - z) * s


def _f32(a: np.ndarray) -> np.ndarray:
    """Round to float32, as the scales are stored."""
    return a.astype(np.float32).astype(np.float64)


def rtn(w: np.ndarray, grid: Grid, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-to-nearest on `grid`: w [N,K] -> q [N,K] uint8, s [N,K/block] float32,
    z [N,K/block] float32 (integer-valued except for asym_float)."""
    n, k = w.shape
    if k % block:
        raise ScredgeError("block size does not divide K", received=f"K {k}, block {block}")
    kb = k // block
    q = np.empty((n, k), np.uint8)
    s, z = np.empty((n, kb), np.float32), np.empty((n, kb), np.float32)
    for r0, r1 in _row_chunks(n, k):  # float64 math a few MB at a time, not on all of w
        g = np.asarray(w[r0:r1], np.float64).reshape((r1 - r0) * kb, block)
        sc, zp = grid.params(g)
        q[r0:r1] = grid.quantize(g, sc, zp).reshape(r1 - r0, k)
        s[r0:r1], z[r0:r1] = sc.reshape(r1 - r0, kb), zp.reshape(r1 - r0, kb)
    return q, s, z


CHUNK_ELEMENTS = 1 << 20  # float64 temporaries of rtn / dequantize: 8 MB at a time


def _row_chunks(n: int, k: int):
    step = max(1, CHUNK_ELEMENTS // max(k, 1))
    return ((r0, min(n, r0 + step)) for r0 in range(0, n, step))


def dequantize(q: np.ndarray, s: np.ndarray, z: np.ndarray, block: int) -> np.ndarray:
    """[N,K] float32 weights of integers q with per-block s, z [N, K/block]."""
    rep = lambda a: np.repeat(a.astype(np.float64), block, axis=1)  # noqa: E731
    out = np.empty(q.shape, np.float32)
    for r0, r1 in _row_chunks(*q.shape):
        out[r0:r1] = (q[r0:r1].astype(np.float64) - rep(z[r0:r1])) * rep(s[r0:r1])
    return out


def pack_weights(q: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Unsigned integers [N,K] -> MatMulNBits' B [N, K/block, blob] uint8 (4-bit: two per
    byte, the first in the low nibble)."""
    n, k = q.shape
    u = q.astype(np.uint8)
    if bits == 4:
        u = u[:, 0::2] | (u[:, 1::2] << 4)
    return np.ascontiguousarray(u.reshape(n, k // block, -1))


def pack_zero_points(z: np.ndarray, grid: Grid) -> np.ndarray:
    """MatMulNBits' zero_points input: float32 [N * K/block] for asym_float; uint8, per row
    [N, ceil(K/block * bits / 8)] flattened (4-bit: two per byte, low nibble first) else."""
    if grid.kind == "asym_float":
        return np.ascontiguousarray(z.astype(np.float32).ravel())
    u = np.rint(z).astype(np.uint8)
    if grid.bits == 4:
        if u.shape[1] % 2:
            u = np.concatenate([u, np.zeros((u.shape[0], 1), np.uint8)], axis=1)
        u = u[:, 0::2] | (u[:, 1::2] << 4)
    return np.ascontiguousarray(u.ravel())
