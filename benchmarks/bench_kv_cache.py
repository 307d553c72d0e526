"""Decode ms/token of the shared ("in-place") KV-cache form against the concat form, at
two context lengths, float32 / int8 / int4 (SCR_SPEC v3 section 3; issue #29).

Prepare once (a random-weight Llama of SmolLM2-135M's shape, as bench_real_size.py builds
it, retrofitted with SCR on every layer at gamma 0): one torch export, then the graphs the
artifacts hold, written beside each other without the export-time verification (the
parity of each form is the test suite's and `scredge parity`'s job):

  fp32-concat   the float artifact's model.onnx (concat caches, what runs today)
  fp32-shared   the same graph fused and rewritten (export/ort_shared_cache.py)
  int8/int4-concat, -shared   the quantized onnxruntime form (MatMulNBits, fused), each way

Then each (graph, context) runs in its own process, alternating graphs and repeating, with
the same thread count: prefill `context` tokens, decode `--steps` tokens; the median step.

Usage: python benchmarks/bench_kv_cache.py --dir DIR [--prepare] [--contexts 16,1024]
       [--threads 2] [--repeat 3] [--steps 32] [--graphs fp32-concat,fp32-shared,...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

GRAPHS = ("fp32-concat", "fp32-shared", "int8-concat", "int8-shared", "int4-concat",
          "int4-shared")


def prepare(folder: Path) -> None:
    import onnx

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_real_size import save_llama

    from scredge.export.graph import export_graph
    from scredge.export.ort_shared_cache import shared_graph, to_shared_cache
    from scredge.export.pipeline import cast_for_export
    from scredge.export.quantize import QUANT_OPSET, QuantSpec, quantize_graphs
    from scredge.export.sources import select_source

    folder.mkdir(parents=True, exist_ok=True)
    hf = folder / "hf"
    if not (hf / "config.json").exists():
        save_llama(hf, "smollm2-135m")
    src = select_source(llama=hf)
    model = src.model
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    t0 = time.perf_counter()
    plain = export_graph(cast_for_export(model, "float32"), QUANT_OPSET)
    print(f"torch export {time.perf_counter() - t0:.0f} s", flush=True)

    def save(proto, name):
        onnx.save_model(proto, str(folder / f"{name}.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=f"{name}.onnx.data")
        print("wrote", name, flush=True)

    save(plain, "fp32-concat")
    save(shared_graph(plain, model.config)[0], "fp32-shared")
    for bits in (8, 4):
        ort = quantize_graphs(plain, QuantSpec(bits), model.config).ort
        save(ort, f"int{bits}-concat")
        to_shared_cache(ort, model.config)
        save(ort, f"int{bits}-shared")


def child(folder: Path, graph: str, context: int, steps: int, threads: int) -> dict:
    """Runs in its own process: the median decode step after `context` prefilled tokens."""
    import numpy as np

    from scredge.config import SCRConfig
    from scredge.runtime.generation import positions, prefill
    from scredge.runtime.loaders import ort_session
    from scredge.runtime.runners.ort_runner import OrtRunner

    config = SCRConfig.from_dict(json.loads((folder / "config.json").read_text()))
    session = ort_session(folder / f"{graph}.onnx", "cpu", threads=threads)
    runner = OrtRunner(session, config, np.float32)
    rng = np.random.default_rng(0)
    dec = runner.decoder(1)
    prefill(dec, rng.integers(0, config.vocab_size, (1, context)))
    times = []
    for k in range(steps + 3):
        tok = rng.integers(0, config.vocab_size, (1, 1))
        t0 = time.perf_counter()
        dec.step(tok, positions(context + k, 1, 1))
        times.append(time.perf_counter() - t0)
    return {"graph": graph, "context": context, "ms": 1e3 * statistics.median(times[3:])}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--prepare", action="store_true")
    p.add_argument("--contexts", default="16,1024")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--graphs", default=",".join(GRAPHS))
    p.add_argument("--child", nargs=2, metavar=("GRAPH", "CONTEXT"))
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.dir, a.child[0], int(a.child[1]), a.steps, a.threads)))
        return
    if a.prepare:
        prepare(a.dir)
    results: dict[tuple[str, int], list[float]] = {}
    contexts = [int(c) for c in a.contexts.split(",")]
    for rep in range(a.repeat):
        for context in contexts:
            for graph in a.graphs.split(","):  # alternating processes
                out = subprocess.run(
                    [sys.executable, __file__, "--dir", str(a.dir), "--threads",
                     str(a.threads), "--steps", str(a.steps), "--child", graph, str(context)],
                    capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault((graph, context), []).append(r["ms"])
                print(f"rep {rep} {graph:12s} context {context:5d}: {r['ms']:.2f} ms/token",
                      flush=True)
    print(f"\nmedian of {a.repeat} processes, {a.threads} threads, ms/token:")
    print("| graph | " + " | ".join(f"context {c}" for c in contexts) + " | ratio |")
    print("|---|" + "---|" * (len(contexts) + 1))
    for graph in a.graphs.split(","):
        ms = [statistics.median(results[(graph, c)]) for c in contexts]
        print(f"| {graph} | " + " | ".join(f"{m:.2f}" for m in ms)
              + f" | {ms[-1] / ms[0]:.2f}x |")


if __name__ == "__main__":
    main()
