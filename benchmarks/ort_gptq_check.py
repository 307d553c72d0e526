"""Why `--quant-method gptq` is scredge's own GPTQ (export/gptq.py) and not onnxruntime's: a
check to re-run on a new onnxruntime.

onnxruntime's `MatMulNBitsQuantizer` offers one activation-aware method that runs without
extra packages: `GPTQWeightOnlyQuantConfig`, its bundled copy of Intel Neural Compressor's
`gptq` (`onnxruntime.quantization.neural_compressor.weight_only`). (Its other one,
`nvidia_awq`, needs NVIDIA's `modelopt`, `datasets` and the model's Hugging Face folder.)
This script feeds `gptq` correlated activations X and a weight W (layout [K, N], as the
quantizer passes them) and compares the output error ||X W - X W_q|| with round-to-nearest
on the same grid. GPTQ should be clearly lower. In onnxruntime 1.32 it is not:

- the error feedback multiplies by `Hinv[i:, i]` and `Hinv[i2:, i1:i2]` of an *upper*
  triangular factor (`cholesky(inv(H)).T`): both are zero below the diagonal, so no error is
  ever propagated and the result equals round-to-nearest exactly;
- with `is_symmetric=True`, `gptq_quantize` re-quantizes that result with scales computed
  afresh from its block maxima (`quant_tensor(..., "sym", "uint")`), a different grid, so
  the written int4 weights are worse than plain round-to-nearest.

Usage: python benchmarks/ort_gptq_check.py   (prints the errors; exit 1 while GPTQ is no
better than round-to-nearest: once it passes, export/gptq.py could hand its work back)
"""

from __future__ import annotations

import sys

import numpy as np


def rtn_same_grid(w: np.ndarray, group: int, scheme: str) -> np.ndarray:
    """Round-to-nearest on the grid `gptq` itself uses (per group of rows, 4 bits)."""
    out = np.empty_like(w)
    for s in range(0, w.shape[0], group):
        b = w[s:s + group]
        lo, hi = np.minimum(b.min(0), 0), np.maximum(b.max(0), 0)
        if scheme == "sym":
            hi = np.maximum(-lo, hi)
            lo = -hi
        scale = (hi - lo) / 15
        zero = np.full_like(scale, 8.0) if scheme == "sym" else np.round(-lo / scale)
        out[s:s + group] = scale * (np.clip(np.round(b / scale) + zero, 0, 15) - zero)
    return out


def written(wq: np.ndarray, group: int, scheme: str) -> np.ndarray:
    """What `gptq_quantize` stores for `gptq`'s output: re-quantized, dequantized here."""
    from onnxruntime.quantization.neural_compressor.weight_only import quant_tensor

    k, n = wq.shape
    q, s, z = quant_tensor(wq.T.copy(), 4, group, scheme, "uint")
    return ((q.astype(np.float64) - z) * s).reshape(n, k).T


def ours_vs_rtn(w: np.ndarray, h: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """scredge's GPTQ and onnxruntime's round-to-nearest (= GPTQ with a diagonal Hessian,
    tests/export/test_gptq.py), dequantized to [K, N]."""
    from scredge.export.gptq import gptq_quantize

    def dequantized(hessian):
        q, s = gptq_quantize(w.T, hessian, 4, group)
        n, k = q.shape
        return (q.reshape(n, -1, group) * s[..., None]).reshape(n, k).T

    return dequantized(np.diag(np.diag(h))), dequantized(h)


def main() -> int:
    import onnxruntime
    from onnxruntime.quantization.neural_compressor.weight_only import gptq

    rng = np.random.default_rng(0)
    k, n, group = 256, 128, 32
    x = rng.normal(size=(2048, k)) @ (rng.normal(size=(k, k)) / np.sqrt(k))
    w = rng.normal(size=(k, n)) * 0.05
    h = 2 / len(x) * x.T @ x

    def err(wq):
        return float(np.linalg.norm(x @ w - x @ wq))

    print(f"onnxruntime {onnxruntime.__version__}: ||X W - X W_q||, 4 bits, group {group}")
    better = True
    for scheme in ("asym", "sym"):
        fake = gptq(w.copy(), h.copy(), 4, group, scheme, 128, 0.01, False, False, True)
        rtn = err(rtn_same_grid(w, group, scheme))
        g, gw = err(fake), err(written(fake, group, scheme))
        same = np.abs(fake - rtn_same_grid(w, group, scheme)).max()
        print(f"  {scheme:4s}  round-to-nearest {rtn:8.3f}   gptq {g:8.3f}   gptq as written "
              f"{gw:8.3f}   max |gptq - rtn| {same:.2e}")
        better &= gw < 0.95 * rtn
    ours = ours_vs_rtn(w, h, group)
    print(f"  scredge's GPTQ (export/gptq.py) on onnxruntime's symmetric MatMulNBits grid: "
          f"round-to-nearest {err(ours[0]):8.3f}   gptq {err(ours[1]):8.3f}")
    print("GPTQ beats round-to-nearest" if better else
          "GPTQ is no better than round-to-nearest: scredge keeps its own (export/gptq.py)")
    return 0 if better else 1


if __name__ == "__main__":
    sys.exit(main())
