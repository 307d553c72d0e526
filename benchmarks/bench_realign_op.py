"""`scr.Realign` alone on onnxruntime CPU: the custom-op kernel vs the function body.

1. One Realign node per session (weights as initializers, as in an artifact), decode and
   prefill shapes: median thread CPU time of `session.run` (Python's call overhead, a few
   µs, is in both).
2. Per-node cost in a graph: a chain of 41 vs 1 Realign nodes (kernel), and of 41 vs 1 Add
   nodes of the same [1,1,D] shape, graph optimisations off: (t41 - t1) / 40.
3. With `--compare LIB`: that per-node cost with the built library and with LIB (another
   build of the kernel, e.g. of an earlier commit), alternating for `--rounds` rounds;
   medians and their ratio.

Usage: python benchmarks/bench_realign_op.py [--runs 400] [--compare LIB [--rounds 6]]
       (needs `make kernels`)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

SHAPES = ((1, 1, 128), (1, 1, 512), (1, 256, 128), (1, 256, 512))


def _session(model: bytes, library, optimize: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if library is not None:
        opts.register_custom_ops_library(str(library))
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _cpu_us(session, feed, runs: int) -> float:
    for _ in range(max(10, runs // 10)):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.thread_time()
        session.run(None, feed)
        times.append(time.thread_time() - t0)
    return statistics.median(times) * 1e6


def _inputs(B, T, D):
    rng = np.random.default_rng(0)
    f = np.float32
    return {"h": rng.normal(size=(B, T, D)).astype(f),
            "m_prev": rng.normal(size=(B, T, D)).astype(f),
            "num_in": rng.normal(size=(B, D)).astype(f), "den_in": np.ones((B, 1), f),
            "w_r": (rng.normal(size=D) * 0.3).astype(f), "b_r": np.zeros(1, f),
            "w_g": (rng.normal(size=D) * 0.3).astype(f), "b_g": np.zeros(1, f)}


def _chain(n: int, op: str, D: int, with_function: bool, T: int = 1) -> bytes:
    """n nodes in a chain (each m feeds the next m_prev) on [1,T,D], every output typed."""
    from onnx import TensorProto, helper

    from scredge.contract import REALIGN_INPUTS
    from scredge.export.realign_onnx import realign_function

    f = TensorProto.FLOAT
    shapes = {"h": [1, T, D], "m_prev": [1, T, D], "num_in": [1, D], "den_in": [1, 1],
              "w_r": [D], "b_r": [1], "w_g": [D], "b_g": [1]}
    nodes, info, prev = [], [], "m_prev"
    for i in range(n):
        out = f"m{i}"
        if op == "Realign":
            nodes.append(helper.make_node("Realign", ["h", prev, *REALIGN_INPUTS[2:]],
                                          [out, f"num{i}", f"den{i}"], domain="scr", kappa=8.0))
            info += [helper.make_tensor_value_info(f"num{i}", f, [1, D]),
                     helper.make_tensor_value_info(f"den{i}", f, [1, 1])]
        else:
            nodes.append(helper.make_node("Add", ["h", prev], [out]))
        info.append(helper.make_tensor_value_info(out, f, [1, T, D]))
        prev = out
    graph = helper.make_graph(nodes, "chain",
                              [helper.make_tensor_value_info(k, f, v) for k, v in shapes.items()],
                              [helper.make_tensor_value_info(prev, f, [1, T, D])],
                              value_info=info[:-1])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid("scr", 1)],
                             functions=[realign_function(18)] if with_function else []
                             ).SerializeToString()


def _per_node(op: str, library, feed, runs: int, D: int = 128) -> float:
    """µs of CPU time per `op` node: a chain of 41 minus a chain of 1, over 40."""
    cost = [_cpu_us(_session(_chain(n, op, D, False), library, optimize=False), feed, runs)
            for n in (1, 41)]
    return (cost[1] - cost[0]) / 40


def _compare(library, other, runs: int, rounds: int) -> None:
    feed = _inputs(1, 1, 128)
    got = {library: [], other: []}
    for r in range(rounds):  # alternating, so drift on a shared machine hits both
        for lib in (library, other) if r % 2 == 0 else (other, library):
            got[lib].append(_per_node("Realign", lib, feed, runs))
    this, that = (statistics.median(got[lib]) for lib in (library, other))
    print(f"per Realign node (D 128, T 1), median of {rounds} alternating rounds: "
          f"{this:.2f} µs ({library}) vs {that:.2f} µs ({other}) -> x{this / that:.2f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--compare", default=None, help="another build of the kernel library")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args(argv)
    from scredge.plugins.realign.ort_kernel import find_library

    library, why = find_library()
    if library is None:
        raise SystemExit(f"no kernel library: {why}")
    print(f"library {library}")
    for B, T, D in SHAPES:
        feed = _inputs(B, T, D)
        runs = args.runs if T == 1 else max(20, args.runs // 8)
        model = _chain(1, "Realign", D, with_function=True, T=T)
        kernel = _cpu_us(_session(model, library), feed, runs)
        function = _cpu_us(_session(model, None), feed, runs)
        print(f"B{B} T{T:<4} D{D:<4} one node: kernel {kernel:7.1f} µs, function body "
              f"{function:7.1f} µs (median thread CPU time per run)")
    feed = _inputs(1, 1, 128)
    for op in ("Add", "Realign"):
        print(f"per {op} node in a chain (D 128, T 1): "
              f"{_per_node(op, library, feed, args.runs):.2f} µs")
    if args.compare:
        _compare(library, args.compare, args.runs, args.rounds)


if __name__ == "__main__":
    main()
