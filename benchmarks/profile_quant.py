"""Where an int4 decode step's time goes: scredge's onnxruntime form against
onnxruntime-genai's int4 graph of the same Llama, by onnxruntime's own profiler.

Both run `--steps` decode steps after a `--prompt`-token prompt, one intra-op thread, in
this process one after the other; the profiler's `*_kernel_time` events of the last
`--steps` runs are summed per op type and divided by the steps (microseconds per step);
"executor" is the rest of each `model_run` (dispatch, allocation, shape inference). Node
counts are per step. Inputs: the folders bench_quant.py made (`--artifacts`):
`llama-int4` (scredge) and `genai-int4`. The profiler's own cost per node inflates graphs
with more nodes; the counts and the kernel split are the evidence, not the totals.

Usage: python benchmarks/profile_quant.py --artifacts DIR [--steps 64] [--prompt 16]
       [--ours llama-int4] [--genai genai-int4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def per_op(profile: Path, steps: int) -> dict:
    events = json.loads(profile.read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    runs = runs[-steps:]
    t0 = runs[0]["ts"]
    kernel, count = defaultdict(float), defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= t0:
            op = e["args"]["op_name"]
            kernel[op] += e["dur"] / steps
            count[op] += 1 / steps
    wall = sum(r["dur"] for r in runs) / steps
    return {"wall_us": wall, "executor_us": wall - sum(kernel.values()),
            "kernel_us": dict(kernel), "nodes": dict(count)}


def ours(folder: Path, prompt: int, steps: int, out: Path) -> dict:
    from bench_quant import scredge_graph  # an artifact or a speed-only graph of that run

    from scredge.runtime.loaders import ort_session
    from scredge.runtime.runners.ort_runner import OrtRunner

    artifact, graph, _ = scredge_graph(folder)
    session = ort_session(graph, "cpu", threads=1, profile_prefix=out / "ours")
    runner = OrtRunner(session, artifact.config, np.float32)
    dec = runner.decoder(1)
    v = artifact.config.vocab_size
    dec.step((np.arange(prompt) % v)[None], np.arange(prompt)[None])
    for i in range(steps):
        dec.step(np.array([[i % v]]), np.array([[prompt + i]]))
    return per_op(Path(session.end_profiling()), steps)


def genai(folder: Path, prompt: int, steps: int, out: Path) -> dict:

    copy = out / "genai-model"
    shutil.copytree(folder, copy)
    cfg_path = copy / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    opts = cfg["model"]["decoder"].setdefault("session_options", {})
    opts.update(intra_op_num_threads=1, enable_profiling=str(out / "genai"))
    cfg_path.write_text(json.dumps(cfg))
    # a child process: onnxruntime writes the profile when the session is destroyed
    code = (
        "import sys, numpy as np, onnxruntime_genai as og\n"
        "model = og.Model(sys.argv[1]); params = og.GeneratorParams(model)\n"
        f"params.set_search_options(max_length={prompt + steps + 1}, "
        f"min_length={prompt + steps + 1}, do_sample=False)\n"
        "gen = og.Generator(model, params)\n"
        f"gen.append_tokens(np.arange({prompt}, dtype=np.int32)[None])\n"
        "while not gen.is_done():\n    gen.generate_next_token()\n"
        "del gen, params, model\n")
    subprocess.run([sys.executable, "-c", code, str(copy)], check=True)
    return per_op(max(out.glob("genai*.json"), key=lambda p: p.stat().st_mtime), steps)


def lines(name: str, p: dict) -> list[str]:
    out = [f"{name}: {p['wall_us']:.0f} us per decode step (profiled), executor "
           f"{p['executor_us']:.0f} us, {sum(p['nodes'].values()):.0f} nodes"]
    for op, us in sorted(p["kernel_us"].items(), key=lambda kv: -kv[1]):
        out.append(f"  {op:36s} {us:8.1f} us  {p['nodes'][op]:4.0f} nodes")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--ours", default="llama-int4")
    ap.add_argument("--genai", default="genai-int4")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a = ours(args.artifacts / args.ours, args.prompt, args.steps, Path(tmp))
        b = genai(args.artifacts / args.genai, args.prompt, args.steps, Path(tmp))
    print("\n".join(lines(f"scredge {args.ours}", a) + [""] + lines(f"genai {args.genai}", b)))


if __name__ == "__main__":
    main()
