"""Decode speed of the torch-free runtime against the PyTorch reference, same run, same
machine, batch 1, medians over repeats; plus the memory-bandwidth roofline and the runtime's
own overhead. Sampling (greedy argmax through the shared NumPy sampler) is included.

Targets (runtime issue): decode tokens/s >= 4x the reference on tiny, >= 2.5x on small;
on small >= 80 % of the roofline (weight bytes per token / measured read bandwidth); the
runtime's overhead (everything but the backend's run call) <= 10 % of a decode step.

Usage: python benchmarks/bench_decode.py [--presets tiny small] [--tokens 256] [--repeat 5]
       [--artifacts DIR]   (exports missing presets into DIR, default a temp folder)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from scredge.runtime import Engine
from scredge.sampling import GREEDY, Sampler

TARGETS = {"tiny": 4.0, "small": 2.5}
PROMPT = 16


def read_bandwidth_gbs(threads: int, mib: int = 1024, repeat: int = 7) -> float:
    """Median read bandwidth: `threads` threads each summing their share of a large array
    (NumPy releases the GIL in reductions), bytes read / wall time."""
    data = np.ones(mib * (1 << 20) // 4, dtype=np.float32)
    parts = np.array_split(data, threads)
    samples = []
    for _ in range(repeat):
        ts = [threading.Thread(target=np.add.reduce, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        samples.append(data.nbytes / (time.perf_counter() - t0) / 1e9)
    return statistics.median(samples)


def ref_tokens_per_s(model, tokens: int) -> float:
    import torch

    from scredge.ref import decode_step as ref_decode_step
    from scredge.ref import prefill as ref_prefill

    ids = torch.arange(PROMPT).view(1, -1) % 256
    sampler = Sampler(GREEDY)
    logits, state = ref_prefill(model, ids)
    t0 = time.perf_counter()
    for i in range(tokens):
        tok = torch.from_numpy(sampler(logits.numpy()))
        logits, state = ref_decode_step(model, tok, PROMPT + i, state)
    return tokens / (time.perf_counter() - t0)


def runtime_tokens_per_s(engine: Engine, tokens: int) -> tuple[float, float]:
    """(decode tokens/s, overhead fraction) through the public Generator API."""
    gen = engine.generator(list(range(PROMPT)), temperature=0, max_new_tokens=tokens + 1)
    gen.next_token()  # the first token comes from the prefill logits
    run_s = 0.0
    t0 = time.perf_counter()
    for _ in range(tokens):
        gen.next_token()
        run_s += gen.decoder.last_run_s
    wall = time.perf_counter() - t0
    return tokens / wall, 1.0 - run_s / wall


def child(kind: str, folder: Path, tokens: int, threads: int) -> dict:
    """One measurement in this (child) process: the model alone in memory and caches, and
    no other library's worker threads spinning on the two cores."""
    if kind == "ref":
        import torch

        from scredge.ref import load_checkpoint

        torch.set_num_threads(threads)
        model = load_checkpoint(folder / "model.safetensors")
        ref_tokens_per_s(model, 8)  # warm-up
        return {"tokens_per_s": ref_tokens_per_s(model, tokens)}
    engine = Engine.load(folder, backend="ort", threads=threads)
    runtime_tokens_per_s(engine, 8)  # warm-up
    tps, overhead = runtime_tokens_per_s(engine, tokens)
    return {"tokens_per_s": tps, "overhead": overhead}


def is_stale(folder: Path) -> bool:
    """True when the artifact is older than a source file that decides its graph (the
    reference model and the exporter): reusing it would benchmark old code."""
    repo = Path(__file__).resolve().parents[1]
    sources = [f for d in ("scr_ref", "export") for f in (repo / d).glob("*.py")]
    exported = (folder / "model.onnx").stat().st_mtime
    return any(f.stat().st_mtime > exported for f in sources)


def run_child(kind: str, folder: Path, tokens: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(folder),
                          "--tokens", str(tokens), "--threads", str(threads)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--artifacts", type=Path, default=None)
    ap.add_argument("--child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.tokens, args.threads)))
        return
    root = args.artifacts or Path(tempfile.mkdtemp(prefix="scredge-bench-"))
    bw = read_bandwidth_gbs(args.threads)
    print(f"machine: {args.threads} threads, read bandwidth {bw:.1f} GB/s (median of 7); "
          f"each sample in its own process, alternating reference and runtime", flush=True)
    for preset in args.presets:
        folder = root / preset
        if folder.exists() and is_stale(folder):
            print(f"warning: {folder} was exported before the last change to the exporter or "
                  f"the reference model; its graph may not be what this code exports. "
                  f"Delete it to re-export.", flush=True)
        if not folder.exists():
            from scredge.export.pipeline import export_artifact
            from scredge.export.sources import from_preset

            src = from_preset(preset, seed=0)
            export_artifact(src.model, folder, source=src.description)
        ref, rt, over = [], [], []
        for _ in range(args.repeat):  # alternating, so drift hits both alike
            ref.append(run_child("ref", folder, args.tokens, args.threads)["tokens_per_s"])
            r = run_child("runtime", folder, args.tokens, args.threads)
            rt.append(r["tokens_per_s"])
            over.append(r["overhead"])
        ref_m, rt_m, over_m = (statistics.median(x) for x in (ref, rt, over))
        weight_bytes = sum(e["bytes"] for n, e in json.loads(
            (folder / "manifest.json").read_text())["files"].items() if n == "model.safetensors")
        roofline = bw * 1e9 / weight_bytes
        print(f"{preset:<6} ref {ref_m:8.1f} tok/s | runtime {rt_m:8.1f} tok/s | "
              f"speedup {rt_m / ref_m:5.2f}x (target {TARGETS.get(preset, 0):.1f}x) | "
              f"roofline {roofline:7.1f} tok/s ({weight_bytes / 1e6:.0f} MB/token) -> "
              f"{rt_m / roofline:6.1%} | overhead {over_m:5.1%} (target <= 10%)", flush=True)
        print(f"       samples ref {[round(x, 1) for x in ref]} runtime "
              f"{[round(x, 1) for x in rt]}", flush=True)


if __name__ == "__main__":
    main()
