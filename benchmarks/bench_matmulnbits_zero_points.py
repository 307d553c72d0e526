"""onnxruntime's CPU MatMulNBits (4-bit) with no, integer and float zero points: us per call
of one decode-shaped node (batch 1, one token, one intra-op thread), the three alternating.

Why: SmolLM2's int4 plan takes float zero points (the Q4_1 GGUF's grid, held exactly), and
its decode was measured many times slower than onnxruntime-genai's int4 (no zero points);
this isolates the kernel. Usage: python benchmarks/bench_matmulnbits_zero_points.py
[--k 576] [--n 1536] [--calls 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

BLOCK = 32


def graph(k: int, n: int, zero_points: str, accuracy_level: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    blocks = k // BLOCK
    inits = [numpy_helper.from_array(
        rng.integers(0, 256, (n, blocks, BLOCK // 2), dtype=np.uint8), "w"),
        numpy_helper.from_array(rng.random(n * blocks, dtype=np.float32), "s")]
    if zero_points == "integer":  # two 4-bit zero points a byte, rows padded to a byte
        inits.append(numpy_helper.from_array(
            rng.integers(0, 256, n * ((blocks + 1) // 2), dtype=np.uint8), "z"))
    elif zero_points == "float":
        inits.append(numpy_helper.from_array(rng.random(n * blocks, dtype=np.float32), "z"))
    node = helper.make_node("MatMulNBits", ["x"] + [t.name for t in inits], ["y"],
                            domain="com.microsoft", K=k, N=n, bits=4, block_size=BLOCK,
                            accuracy_level=accuracy_level)
    g = helper.make_graph([node], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, n])],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21),
                                               helper.make_opsetid("com.microsoft", 1)]
                             ).SerializeToString()


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=576)
    ap.add_argument("--n", type=int, default=1536)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    x = {"x": np.random.default_rng(1).random((1, 1, args.k), dtype=np.float32)}
    sessions = {}
    for zp in ("none", "integer", "float"):
        for acc in (0, 4):
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            sessions[(zp, acc)] = ort.InferenceSession(
                graph(args.k, args.n, zp, acc), so, providers=["CPUExecutionProvider"])
    samples: dict[tuple, list[float]] = {key: [] for key in sessions}
    for _ in range(args.rounds):
        for key, s in sessions.items():
            for _ in range(10):
                s.run(None, x)
            t = time.perf_counter()
            for _ in range(args.calls):
                s.run(None, x)
            samples[key].append((time.perf_counter() - t) / args.calls * 1e6)
    base = statistics.median(samples[("none", 4)])
    print(f"onnxruntime {ort.__version__}, K {args.k}, N {args.n}, block {BLOCK}, 1 thread")
    for (zp, acc), v in samples.items():
        med = statistics.median(v)
        print(f"zero points {zp:8s} accuracy_level {acc}: {med:8.1f} us/call "
              f"({med / base:5.1f}x no zero points, accuracy_level 4)")


if __name__ == "__main__":
    main()
