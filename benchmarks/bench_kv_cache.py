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

A graph named `genai:FOLDER` is an onnxruntime-genai model built from the same Hugging Face
folder (python -m onnxruntime_genai.models.builder -i DIR/hf -o FOLDER -p int4 -e cpu),
run in `--genai-python` (a Python with onnxruntime-genai installed) by its own loop.

Usage: python benchmarks/bench_kv_cache.py --dir DIR [--prepare] [--contexts 16,1024]
       [--threads 2] [--repeat 3] [--steps 32] [--graphs fp32-concat,fp32-shared,...]
       [--genai-python PY]
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

    def save(proto, name):  # a copy: saving moves the tensors of the proto it is given out
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        onnx.save_model(copy, str(folder / f"{name}.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=f"{name}.onnx.data")
        print("wrote", name, flush=True)

    if (folder / "fp32-concat.onnx").exists():  # an earlier --prepare's torch export
        plain = onnx.load(str(folder / "fp32-concat.onnx"))
    else:
        t0 = time.perf_counter()
        plain = export_graph(cast_for_export(model, "float32"), QUANT_OPSET)
        print(f"torch export {time.perf_counter() - t0:.0f} s", flush=True)
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
    times, cpu = [], []
    for k in range(steps + 3):
        tok = rng.integers(0, config.vocab_size, (1, 1))
        t0, c0 = time.perf_counter(), time.process_time()
        dec.step(tok, positions(context + k, 1, 1))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return _medians(graph, context, times, cpu)


def _medians(graph: str, context: int, times: list[float], cpu: list[float]) -> dict:
    """Wall and CPU (all threads of the process) ms per step, the 3 warm-up steps left out:
    on a loaded machine the CPU time is the steadier of the two."""
    return {"graph": graph, "context": context, "ms": 1e3 * statistics.median(times[3:]),
            "cpu_ms": 1e3 * statistics.median(cpu[3:])}


def genai_child(folder: Path, context: int, steps: int, threads: int) -> dict:
    """The same measurement through onnxruntime-genai (its own loop: GroupQueryAttention
    over a buffer shared by past and present), greedy, `threads` intra-op threads."""
    import numpy as np
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.clear_providers()
    model = og.Model(config)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=context + steps + 8, do_sample=False)
    gen = og.Generator(model, params)
    vocab = json.loads((folder / "genai_config.json").read_text())["model"]["vocab_size"]
    gen.append_tokens(np.random.default_rng(0).integers(0, vocab, context).astype(np.int32))
    times, cpu = [], []
    for _ in range(steps + 3):
        t0, c0 = time.perf_counter(), time.process_time()
        gen.generate_next_token()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return _medians(folder.name, context, times, cpu)


def set_genai_threads(folder: Path, threads: int) -> None:
    """Pin a built onnxruntime-genai model to `threads` intra-op threads (its config)."""
    path = folder / "genai_config.json"
    config = json.loads(path.read_text())
    config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = (
        threads)
    path.write_text(json.dumps(config, indent=2))


def _run_child(a, graph: str, context: int) -> dict:
    if graph.startswith("genai:"):
        folder = Path(graph[len("genai:"):])
        set_genai_threads(folder, a.threads)
        cmd = [a.genai_python, __file__, "--dir", str(folder), "--threads", str(a.threads),
               "--steps", str(a.steps), "--child", "genai", str(context)]
    else:
        cmd = [sys.executable, __file__, "--dir", str(a.dir), "--threads", str(a.threads),
               "--steps", str(a.steps), "--child", graph, str(context)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["graph"] = graph
    return r


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--prepare", action="store_true")
    p.add_argument("--contexts", default="16,1024")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--graphs", default=",".join(GRAPHS))
    p.add_argument("--genai-python", default=sys.executable,
                   help="the Python with onnxruntime-genai, for graphs named genai:FOLDER")
    p.add_argument("--child", nargs=2, metavar=("GRAPH", "CONTEXT"))
    a = p.parse_args(argv)
    if a.child:
        run = genai_child if a.child[0] == "genai" else (
            lambda d, c, s, t: child(d, a.child[0], c, s, t))
        print(json.dumps(run(a.dir, int(a.child[1]), a.steps, a.threads)))
        return
    if a.prepare:
        prepare(a.dir)
    results: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    contexts = [int(c) for c in a.contexts.split(",")]
    for rep in range(a.repeat):
        for context in contexts:
            for graph in a.graphs.split(","):  # alternating processes
                r = _run_child(a, graph, context)
                results.setdefault((graph, context), []).append(r["ms"])
                cpu.setdefault((graph, context), []).append(r.get("cpu_ms", float("nan")))
                print(f"rep {rep} {graph:14s} context {context:5d}: {r['ms']:.2f} ms/token "
                      f"wall, {r.get('cpu_ms', float('nan')):.2f} ms CPU", flush=True)
    for label, table in (("wall", results), ("CPU (all threads)", cpu)):
        print(f"\n{label} ms/token, median of {a.repeat} processes, {a.threads} threads:")
        print("| graph | " + " | ".join(f"context {c}" for c in contexts)
              + f" | {contexts[-1]} / {contexts[0]} |")
        print("|---|" + "---|" * (len(contexts) + 1))
        for graph in a.graphs.split(","):
            ms = [statistics.median(table[(graph, c)]) for c in contexts]
            print(f"| {graph} | " + " | ".join(f"{m:.2f}" for m in ms)
                  + f" | {ms[-1] / ms[0]:.2f}x |")


if __name__ == "__main__":
    main()
