"""What a real-size Llama costs on this machine: export time, peak memory, decode tokens/s.

Builds a random-weight Llama of SmolLM2-135M's shape (D 576, 30 layers, 9 heads / 3 KV
heads, d_ff 1536, 49,152-token vocabulary, tied embeddings, rope theta 1e5) with
transformers and saves it (save_pretrained, float32), then runs, each in its own process so
each peak resident memory (VmHWM) is its own:

  scredge export --from-llama DIR --keep-reference --out ART   SCR on every layer at gamma 0
  scredge bench ART --compare torch               onnxruntime CPU decode, and scr_ref (torch)
                                                  on the same weights in the same run

Usage: python benchmarks/bench_real_size.py [--size smollm2-135m|smoke] [--prompt-len 128]
       [--gen-len 64] [--repeat 3] [--threads N] [--keep DIR] [--json]
Prints the model, export wall time and peak RSS, artifact size, and the decode medians with
their ratio to the torch reference. `--size smoke` is a 1-layer toy for the test suite.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         max_position_embeddings=8192, rope_theta=100000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=True),
    "smoke": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                  max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-5,
                  tie_word_embeddings=True),
}
# runs a scredge command in a child and reports that process's own peak RSS
CHILD = ("import sys\nfrom scredge.cli import main\nfrom scredge.bench.latency import "
         "peak_rss_mib\nrc = main(sys.argv[1:])\nprint(f'PEAK_RSS_MIB {peak_rss_mib():.1f}', "
         "file=sys.stderr)\nsys.exit(rc)\n")


def save_llama(folder: Path, size: str) -> int:
    """A random LlamaForCausalLM of `size` saved in `folder`; returns its parameter count."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPES[size])).eval()
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    return n


def run_scredge(*args: str) -> tuple[str, float, float]:
    """(stdout, wall seconds, peak RSS MiB) of `scredge ARGS` in a child process."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"scredge {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    peak = next(float(line.split()[1]) for line in proc.stderr.splitlines()
                if line.startswith("PEAK_RSS_MIB"))
    return proc.stdout, wall, peak


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def run(size: str, prompt_len: int, gen_len: int, repeat: int, threads: int | None,
        work: Path) -> dict:
    hf, art = work / "hf", work / "artifact"
    t0 = time.perf_counter()
    params = save_llama(hf, size)
    save_s = time.perf_counter() - t0
    export_log, export_s, export_peak = run_scredge("export", "--from-llama", str(hf),
                                                    "--keep-reference",  # --compare torch
                                                    "--out", str(art), "--force")
    bench_args = ["bench", str(art), "--device", "cpu", "--compare", "torch", "--json",
                  "--prompt-len", str(prompt_len), "--gen-len", str(gen_len),
                  "--repeat", str(repeat)]
    if threads:
        bench_args += ["--threads", str(threads)]
    out, _, bench_peak = run_scredge(*bench_args)
    bench = json.loads(out)
    torch_ref = bench["compare"]["torch"]
    return {
        "size": size, "shape": SHAPES[size], "parameters": params, "save_pretrained_s": save_s,
        "export": {"wall_s": export_s, "peak_rss_mib": export_peak,
                   "artifact_mib": folder_mib(art), "hf_folder_mib": folder_mib(hf),
                   "log": export_log.strip().splitlines()},
        "decode": {"prompt_len": prompt_len, "gen_len": gen_len, "repeat": repeat,
                   "ort_tokens_per_s": bench["decode_tokens_per_s"],
                   "ort_ttft_s": bench["ttft_s"],
                   "ort_prefill_tokens_per_s": bench["prefill_tokens_per_s"],
                   "torch_tokens_per_s": torch_ref["decode_tokens_per_s"],
                   "torch_ttft_s": torch_ref["ttft_s"],
                   "ratio_decode": bench["compare"]["ratios"]["decode_tokens_per_s"],
                   "peak_rss_mib": bench_peak},
        "machine": bench["machine"],
    }


def lines(r: dict) -> list[str]:
    e, d, m = r["export"], r["decode"], r["machine"]
    return [
        f"model: random Llama, {r['size']} shape, {r['parameters'] / 1e6:.1f}M parameters, "
        f"SCR on {r['shape']['num_hidden_layers']} layers at gamma 0",
        f"machine: {m['cpu']} ({m['cores']} cores)",
        f"save_pretrained: {r['save_pretrained_s']:.1f} s, folder {e['hf_folder_mib']:.0f} MiB",
        f"export (--from-llama, verification included): {e['wall_s']:.1f} s wall, "
        f"peak RSS {e['peak_rss_mib']:.0f} MiB, artifact {e['artifact_mib']:.0f} MiB",
        *("  " + line.strip() for line in e["log"] if "written in" in line
          or "verified in" in line),
        f"decode (onnxruntime CPU, batch 1, prompt {d['prompt_len']}, {d['gen_len']} new, "
        f"median of {d['repeat']}): {d['ort_tokens_per_s']:.1f} tok/s, TTFT "
        f"{d['ort_ttft_s'] * 1e3:.0f} ms, prefill {d['ort_prefill_tokens_per_s']:.0f} tok/s, "
        f"peak RSS {d['peak_rss_mib']:.0f} MiB",
        f"  scr_ref (torch, same run): {d['torch_tokens_per_s']:.1f} tok/s -> onnxruntime "
        f"{d['ratio_decode']:.2f}x",
    ]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SHAPES), default="smollm2-135m")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all)")
    ap.add_argument("--keep", type=Path, help="keep the HF folder and artifact here")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scredge-real-size-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = run(args.size, args.prompt_len, args.gen_len, args.repeat, args.threads, work)
    print(json.dumps(result, indent=2) if args.json else "\n".join(lines(result)), flush=True)
    return result


if __name__ == "__main__":
    main()
