"""Two decoder graphs run the same way: scredge's onnxruntime form against onnxruntime-genai's
graph of the same model, each by a raw `session.run` on one thread with the same cache
length, interleaved in one process (15 rounds x 30 calls each, medians).

This separates the graph from the loop around it. bench_quant.py compares whole loops
(ours in Python, with `present` returned as new tensors per SCR_SPEC section 3, against
onnxruntime-genai's C++ loop and its shared-buffer cache), so a gap there that this script
does not show is the loop's and the cache form's, not the graph's.

Usage: python benchmarks/graph_ab_genai.py OURS.onnx GENAI.onnx [--past 64 128]
(the folders bench_quant.py --artifacts DIR leaves: DIR/llama-plain-int4-gptq/model.onnx and
DIR/genai-int4/model.onnx)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def session(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def decode_feed(sess, past: int, head_dim: int) -> dict[str, np.ndarray]:
    """One decode step's inputs (batch 1) after `past` cached tokens, for either graph."""
    rng = np.random.default_rng(0)
    feed = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feed[i.name] = np.array([[5]], np.int64)
        elif i.name == "position_ids":
            feed[i.name] = np.array([[past]], np.int64)
        elif i.name == "attention_mask":
            feed[i.name] = np.ones((1, past + 1), np.int64)
        elif i.name.startswith("past_key_values"):
            dim = i.shape[3] if isinstance(i.shape[3], int) else head_dim
            feed[i.name] = rng.standard_normal((1, i.shape[1], past, dim)).astype(np.float32)
        else:
            raise SystemExit(f"{i.name}: an input this script does not know (an SCR graph? "
                             "compare the --scr-layers none export)")
    return feed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ours")
    p.add_argument("genai")
    p.add_argument("--past", type=int, nargs="+", default=[64, 128])
    p.add_argument("--head-dim", type=int, default=64)
    args = p.parse_args()
    import onnxruntime

    sessions = [session(args.ours), session(args.genai)]
    print(f"onnxruntime {onnxruntime.__version__}, one intra-op thread, batch 1, decode step")
    for past in args.past:
        feeds = [decode_feed(s, past, args.head_dim) for s in sessions]
        times: list[list[float]] = [[], []]
        for _ in range(15):
            for k, (s, f) in enumerate(zip(sessions, feeds)):
                for _ in range(5):
                    s.run(None, f)
                for _ in range(30):
                    t = time.perf_counter()
                    s.run(None, f)
                    times[k].append(time.perf_counter() - t)
        ours, genai = (statistics.median(t) * 1e3 for t in times)
        print(f"  past {past:4d}: scredge {ours:.3f} ms   onnxruntime-genai's graph "
              f"{genai:.3f} ms   genai time / ours {genai / ours:.2f} (< 1: genai faster)")


if __name__ == "__main__":
    main()
