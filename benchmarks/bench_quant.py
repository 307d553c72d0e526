"""Decode speed of weight-only int8 / int4 artifacts against float32, same run, same machine.

For each model (the `small` preset, and a Llama of D 512, L 8 built locally with
`transformers`), export float32, int8 and int4 artifacts (`scredge export [--quantize]`, each
verified at export), then measure onnxruntime decode tokens/s in alternating child
processes (f32, int8, int4, f32, int8, int4, ...: drift and neighbours hit all alike),
medians over repeats, batch 1, and the ratios to float32. Each child reports its peak RSS;
each artifact its onnxruntime graph size on disk.

Goals (issue 16): int8 >= 1.8x and int4 >= 3x float32 decode tokens/s.

Usage: python benchmarks/bench_quant.py [--models small llama] [--repeat 5] [--tokens 128]
       [--prompt 16] [--threads N] [--artifacts DIR] [--json PATH]
       python benchmarks/bench_quant.py --worker FOLDER ...   (one measurement; internal)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

GOALS = {"int8": 1.8, "int4": 3.0, "int4-hqq": 3.0}
VARIANTS = {"float32": [], "int8": ["--quantize", "int8"], "int4": ["--quantize", "int4"],
            "int4-hqq": ["--quantize", "int4", "--quant-method", "hqq"]}
LLAMA = dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=4, intermediate_size=1376, vocab_size=2048,
             max_position_embeddings=4096)


def make_llama(folder: Path) -> Path:
    """A randomly initialised Llama of the issue's shape (D 512, L 8), saved locally."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA, tie_word_embeddings=False))
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def export(model: str, variant: str, root: Path) -> Path:
    out = root / f"{model}-{variant}"
    if (out / "manifest.json").is_file():
        return out
    source = (["--from-llama", str(make_llama(root / "llama-hf"))] if model == "llama"
              else ["--preset", model])
    cmd = [sys.executable, "-m", "scredge", "export", *source, *VARIANTS[variant],
           "--out", str(out), "--force"]
    print(" ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    return out


def graph_bytes(folder: Path) -> int:
    """Bytes of the onnxruntime graph (and its external data) a runtime loads."""
    from scredge.runtime.loaders import open_artifact

    name = open_artifact(folder).graph_file("ort")
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith(name))


def worker(folder: Path, prompt: int, tokens: int, threads: int | None) -> dict:
    from scredge.runtime import bench as b
    from scredge.runtime.loaders import load_ort, open_artifact

    artifact = open_artifact(folder)
    runner = load_ort(artifact, device="cpu", threads=threads)
    r = b.bench(runner, prompt_len=prompt, gen_len=tokens, batch=1, warmup=1, repeat=1)
    return {"precision": artifact.precision, "decode_tokens_per_s": r["decode_tokens_per_s"],
            "peak_rss_mib": r["peak_rss_mib"]}


def measure(folder: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(folder), "--prompt", str(args.prompt),
           "--tokens", str(args.tokens)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(args) -> dict:
    root = Path(args.artifacts or tempfile.mkdtemp(prefix="bench_quant-"))
    root.mkdir(parents=True, exist_ok=True)
    report = {}
    for model in args.models:
        folders = {}
        for v in args.variants:
            try:
                folders[v] = export(model, v, root)
            except subprocess.CalledProcessError:  # refused at export (missed its tier)
                print(f"  {model} {v}: refused at export, not measured", flush=True)
        if "float32" not in folders:
            continue
        samples: dict[str, list[dict]] = {v: [] for v in folders}
        for _ in range(args.repeat):
            for v, folder in folders.items():
                samples[v].append(measure(folder, args))
        rows = {}
        for v, runs in samples.items():
            tps = statistics.median(r["decode_tokens_per_s"] for r in runs)
            rows[v] = {"decode_tokens_per_s": tps, "precision": runs[0]["precision"],
                       "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
                       "graph_mib": graph_bytes(folders[v]) / 2**20}
        base = rows["float32"]["decode_tokens_per_s"]
        print(f"\n{model}: decode tokens/s, batch 1, median of {args.repeat} alternating runs")
        for v, row in rows.items():
            row["ratio"] = row["decode_tokens_per_s"] / base
            goal = GOALS.get(v)
            verdict = "" if goal is None else (
                f"  goal >= {goal}x: {'met' if row['ratio'] >= goal else 'MISSED'}")
            print(f"  {v:8s} {row['decode_tokens_per_s']:9.1f} tok/s  {row['ratio']:5.2f}x  "
                  f"peak RSS {row['peak_rss_mib']:6.0f} MiB  graph {row['graph_mib']:7.1f} MiB"
                  f"{verdict}")
        report[model] = rows
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["small", "llama"],
                   choices=["tiny", "small", "llama"])
    p.add_argument("--variants", nargs="+", default=["float32", "int8", "int4"],
                   choices=list(VARIANTS), help="float32 first: the baseline")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--tokens", type=int, default=128, help="decode tokens per run")
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    p.add_argument("--artifacts", type=Path, help="export into (and reuse) this folder")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.prompt, args.tokens, args.threads)))
        return
    report = run(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
