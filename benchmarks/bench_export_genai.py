"""`scredge export --from-llama` against onnxruntime-genai's model builder on the same
Hugging Face folder: wall time, CPU time and memory of each, every run in its own child
process, the two alternating, medians. Memory twice: `peak` is the largest resident set of
one process (VmHWM, os.wait4's ru_maxrss), `tree` the largest Pss summed over the whole
process tree, sampled every 0.2 s (rss_sampler.py): our export runs a model process and a
trace process side by side, and only the tree says what the machine must hold.

Folders: random weights of a real model's shape, float32, written by transformers'
save_pretrained (smollm2-135m: LlamaForCausalLM; qwen2.5-0.5b / qwen2.5-1.5b:
Qwen2ForCausalLM, q/k/v biases, tied embeddings). Ours: `--scr-layers none` (the model the
builder makes), verification against the reference included; the builder:
`python -m onnxruntime_genai.models.builder -i HF -o OUT -p fp32|fp16|int4 -e cpu`.

Usage: python benchmarks/bench_export_genai.py [--shapes smollm2-135m qwen2.5-0.5b]
       [--precisions fp32 fp16 int4] [--repeat 3] [--no-builder] [--work DIR] [--json]
       [--scr-layers none|all] [--cache concat shared]
       python benchmarks/bench_export_genai.py --decode [--contexts 16 1024] [--tokens 32]
       [--hf SMOLLM2_FOLDER] [--gguf SMOLLM2_GGUF] [--threads 2] [--precisions ...]
Decode: ms/token at each context (batch 1, greedy, `--threads` intra-op threads) of our
artifacts of the smollm2-135m folder at each precision (fp32 int8 int4 unless given; each
--cache form when given) against onnxruntime-genai's fp32 and int4 builds of it, and
llama.cpp on the GGUF file as it is (--gguf), each measurement its own process
(benchmarks/bench_quant.py's workers), alternating round after round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # its sibling scripts (bench_quant, rss_sampler), however run
SHAPES = {
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536,
                                   num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, vocab_size=49152,
                                   max_position_embeddings=8192, rope_theta=100000.0,
                                   rms_norm_eps=1e-5, tie_word_embeddings=True)),
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864,
                                   num_hidden_layers=24, num_attention_heads=14,
                                   num_key_value_heads=2, vocab_size=151936,
                                   max_position_embeddings=32768, rope_theta=1000000.0,
                                   rms_norm_eps=1e-6, tie_word_embeddings=True)),
    "qwen2.5-1.5b": ("qwen2", dict(hidden_size=1536, intermediate_size=8960,
                                   num_hidden_layers=28, num_attention_heads=12,
                                   num_key_value_heads=2, vocab_size=151936,
                                   max_position_embeddings=32768, rope_theta=1000000.0,
                                   rms_norm_eps=1e-6, tie_word_embeddings=True)),
}
OURS = {"fp32": [], "fp16": ["--dtype", "float16"], "int4": ["--quantize", "int4"],
        "int8": ["--quantize", "int8"],
        # int4 on the grids other than the default (asym_float, float32 compute): integer
        # zero points or none, with int8 activations (accuracy_level 4) as the builder's
        "int4-asym": ["--quantize", "int4", "--int4-grid", "asym"],
        "int4-sym": ["--quantize", "int4", "--int4-grid", "sym"],
        # the default grid with int8 activations (--activations int8)
        "int4-a8": ["--quantize", "int4", "--activations", "int8"]}


def save_folder(shape: str, folder: Path) -> Path:
    """The random float32 folder of `shape` with a small BPE tokenizer (the builder needs
    one), made once (in a child: its memory is not ours)."""
    if (folder / "config.json").is_file():
        return add_tokenizer(folder)
    family, kwargs = SHAPES[shape]
    code = ("import sys, torch, transformers\n"
            f"kind = {{'llama': transformers.LlamaConfig, 'qwen2': transformers.Qwen2Config}}"
            f"['{family}']\n"
            f"cls = {{'llama': transformers.LlamaForCausalLM, "
            f"'qwen2': transformers.Qwen2ForCausalLM}}['{family}']\n"
            "torch.manual_seed(0)\n"
            f"m = cls(kind(**{kwargs!r})).eval()\n"
            "m.save_pretrained(sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return add_tokenizer(folder)


def add_tokenizer(folder: Path) -> Path:
    """A 2,000-token byte-level BPE trained on scredge's prose corpus, saved by
    transformers beside the weights; its ids are a subset of every shape's vocabulary."""
    if (folder / "tokenizer.json").is_file():
        return folder
    from bench_quant import prose_bpe

    fast = prose_bpe(2000, "<s>", "</s>")
    fast.save_pretrained(folder)
    return folder


def timed(cmd: list[str], log: Path) -> dict:
    """Wall s, CPU s (user + sys) and peak RSS MiB of `cmd`, a child process of its own,
    its stdout and stderr kept in `log` (each line stamped with the seconds since the
    start and the resident MiB then; the memory samples in `log` + '.rss', rss_sampler.py);
    a failed run stops the benchmark naming the log, with its last lines."""
    from rss_sampler import Sampler

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    log.parent.mkdir(parents=True, exist_ok=True)
    sampler = Sampler(proc.pid, t0, log.with_name(log.name + ".rss"))
    with open(log, "w") as out:
        for text in proc.stdout:
            out.write(f"{time.perf_counter() - t0:8.1f} {sampler.now:6.0f}M {text}")
            out.flush()
    _, status, usage = os.wait4(proc.pid, 0)
    sampler.stop()
    if os.waitstatus_to_exitcode(status):
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"{' '.join(map(str, cmd))} failed; its output: {log}\n{tail}")
    return {"wall_s": time.perf_counter() - t0, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mib": usage.ru_maxrss / 1024, "tree_pss_mib": sampler.tree_pss}


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def ours_cmd(hf: Path, out: Path, precision: str, scr_layers: str = "none",
             cache: str | None = None) -> list[str]:
    return [str(Path(sys.executable).parent / "scredge"), "export", "--from-llama", str(hf),
            "--scr-layers", scr_layers, "--out", str(out), "--force", *OURS[precision],
            *([] if cache is None else ["--cache", cache])]


def tools(args) -> list[str]:
    """The runs of one round, alternating: ours once per --cache form (`scredge` alone
    when none is given: the CLI's default form), then the builder."""
    ours = [f"scredge-{c}" for c in args.cache] if args.cache else ["scredge"]
    return ours + (["builder"] if args.builder else [])


def builder_cmd(hf: Path, out: Path, precision: str, cache: Path) -> list[str]:
    return [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o",
            str(out), "-p", precision, "-e", "cpu", "-c", str(cache)]


def export_rows(args, work: Path) -> list[dict]:
    rows = []
    for shape in args.shapes:
        hf = save_folder(shape, work / f"hf-{shape}")
        for precision in args.precisions or ["fp32"]:
            runs: dict[str, list[dict]] = {t: [] for t in tools(args)}
            for i in range(args.repeat):
                for tool in runs:
                    out = work / f"{tool}-{shape}-{precision}"
                    shutil.rmtree(out, ignore_errors=True)
                    cache = tool.split("-", 1)[1] if tool.startswith("scredge-") else None
                    cmd = (builder_cmd(hf, out, precision, work / "builder-cache")
                           if tool == "builder" else
                           ours_cmd(hf, out, precision, args.scr_layers, cache))
                    r = timed(cmd, work / "logs" / f"{out.name}-{i}.log")
                    r["folder_mib"] = folder_mib(out)
                    runs[tool].append(r)
                    print(f"  {shape} {precision} {tool}: {r['wall_s']:.1f} s wall, "
                          f"{r['cpu_s']:.1f} s CPU, peak {r['peak_rss_mib']:.0f} MiB, "
                          f"tree {r['tree_pss_mib']:.0f} MiB",
                          file=sys.stderr, flush=True)
                    shutil.rmtree(work / "builder-cache", ignore_errors=True)
            row = {"shape": shape, "precision": precision, "hf_mib": folder_mib(hf)}
            for tool, rs in runs.items():
                if rs:
                    row[tool] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                    row[tool]["samples_wall_s"] = [round(r["wall_s"], 1) for r in rs]
            rows.append(row)
            print(line(row), flush=True)
    return rows


def line(row: dict) -> str:
    ours = [k for k in row if k.startswith("scredge")]
    text = f"{row['shape']:<13} {row['precision']:<5}"
    for k in ours:
        s = row[k]
        text += (f" {k} {s['wall_s']:6.1f} s wall {s['cpu_s']:6.1f} s CPU "
                 f"{s['peak_rss_mib']:6.0f} MiB peak {s['tree_pss_mib']:6.0f} MiB tree "
                 f"{s['folder_mib']:6.0f} MiB folder |")
    s = row[ours[0]]
    if len(ours) > 1:  # each form against the first, within this run
        for k in ours[1:]:
            t = row[k]
            text += (f" {k} / {ours[0]}: wall {t['wall_s'] / s['wall_s']:.2f}x CPU "
                     f"{t['cpu_s'] / s['cpu_s']:.2f}x memory "
                     f"{t['peak_rss_mib'] / s['peak_rss_mib']:.2f}x |")
    b = row.get("builder")
    if b:
        text += (f" builder {b['wall_s']:6.1f} s wall {b['cpu_s']:6.1f} s CPU "
                 f"{b['peak_rss_mib']:6.0f} MiB peak {b['tree_pss_mib']:6.0f} MiB tree "
                 f"{b['folder_mib']:6.0f} MiB folder | "
                 f"ratio wall {s['wall_s'] / b['wall_s']:.2f}x CPU {s['cpu_s'] / b['cpu_s']:.2f}x"
                 f" memory {s['peak_rss_mib'] / b['peak_rss_mib']:.2f}x"
                 f" tree {s['tree_pss_mib'] / b['tree_pss_mib']:.2f}x")
    return text


def decode_folders(args, work: Path) -> dict[str, Path]:
    """The runs of the decode table, by name: ours at each --precisions (each --cache form),
    onnxruntime-genai's fp32 and int4 builds of the same folder, and llama.cpp on --gguf."""
    hf = args.hf or save_folder("smollm2-135m", work / "hf-smollm2-135m")
    folders = {}
    for p in args.precisions or ["fp32", "int8", "int4"]:
        for cache in args.cache or [None]:
            out = work / (f"scredge-smollm2-135m-{p}" + ("" if cache is None else f"-{cache}"))
            if not (out / "manifest.json").is_file():
                timed(ours_cmd(hf, out, p, cache=cache), work / "logs" / f"{out.name}.log")
            folders[f"scredge {p}" + ("" if cache is None else f" {cache}")] = out
    for p in ("fp32", "int4"):
        gout = work / f"builder-smollm2-135m-{p}"
        if not (gout / "genai_config.json").is_file():
            timed(builder_cmd(hf, gout, p, work / "builder-cache"),
                  work / "logs" / f"{gout.name}.log")
        cfg = json.loads((gout / "genai_config.json").read_text())
        options = cfg["model"]["decoder"].setdefault("session_options", {})
        options["intra_op_num_threads"] = args.threads
        (gout / "genai_config.json").write_text(json.dumps(cfg, indent=4))
        folders[f"genai {p}"] = gout
    if args.gguf:
        folders["llama.cpp"] = args.gguf
    return folders


def decode_sample(name: str, folder: Path, ctx: int, args, work: Path) -> float:
    """ms/token of one run in its own process (benchmarks/bench_quant.py's workers)."""
    cmd = [sys.executable, str(HERE / "bench_quant.py"), "--worker", str(folder),
           "--prompt", str(ctx), "--tokens", str(args.tokens), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        log = work / "logs" / f"worker-{folder.name}-{ctx}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(proc.stdout + proc.stderr)
        raise SystemExit(f"{name} worker failed; its output: {log}\n{proc.stderr[-3000:]}")
    return 1e3 / json.loads(proc.stdout.strip().splitlines()[-1])["decode_tokens_per_s"]


def roofline(args, work: Path) -> None:
    """A float32 decode reads every weight once per token (the tied head the whole embedding
    table): those bytes at what a NumPy read loop reaches with `--threads` threads (a probe
    of the machine, not a bound: onnxruntime's kernels read faster here)."""
    import math

    from bench_decode import read_bandwidth_gbs
    from safetensors import safe_open

    hf = args.hf or work / "hf-smollm2-135m"
    with safe_open(str(hf / "model.safetensors"), "np") as f:
        weights = 4 * sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    bw = read_bandwidth_gbs(args.threads)
    print(f"read probe {bw:.1f} GB/s ({args.threads} threads, median of 7): float32 weights "
          f"{weights / 1e6:.0f} MB a token -> {weights / bw / 1e6:.2f} ms/token at that rate",
          flush=True)


def decode_rows(args, work: Path) -> list[dict]:
    """ms/token of every run of decode_folders at each context, alternating runs round
    after round; medians, each against genai fp32 / int4 of the same run."""
    folders = decode_folders(args, work)
    roofline(args, work)
    rows = []
    for ctx in args.contexts:
        samples: dict[str, list[float]] = {k: [] for k in folders}
        for _ in range(args.repeat):
            for name, folder in folders.items():
                samples[name].append(decode_sample(name, folder, ctx, args, work))
        row = {"context": ctx, **{k: statistics.median(v) for k, v in samples.items()},
               "samples": samples}
        rows.append(row)
        print(f"context {ctx:5d}, {args.threads} thread(s), median of {args.repeat}:",
              flush=True)
        for k in folders:
            print(f"  {k:<22} {row[k]:7.2f} ms/token  ({min(samples[k]):.2f}-"
                  f"{max(samples[k]):.2f})  genai fp32 / this {row['genai fp32'] / row[k]:.2f}x"
                  f"  genai int4 / this {row['genai int4'] / row[k]:.2f}x", flush=True)
    if len(rows) > 1:  # the growth with the context: the last context against the first
        print(f"ms/token at {rows[-1]['context']} / at {rows[0]['context']}: " + "  ".join(
            f"{k} {rows[-1][k] / rows[0][k]:.2f}x" for k in folders), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b"],
                    choices=sorted(SHAPES))
    ap.add_argument("--precisions", nargs="+", default=None, choices=sorted(OURS),
                    help="ours (default: fp32; --decode: fp32 int8 int4)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-builder", dest="builder", action="store_false",
                    help="ours alone (a shape the builder's run does not fit in time)")
    ap.add_argument("--scr-layers", default="none",
                    help="ours: --scr-layers (default none, the model the builder makes; "
                         "all: SCR on every layer, --from-llama's default)")
    ap.add_argument("--cache", nargs="+", choices=["concat", "shared"], default=None,
                    help="ours: --cache, each form given a run of its own per round, "
                         "alternating (default: the CLI's default form)")
    ap.add_argument("--decode", action="store_true", help="decode ms/token instead")
    ap.add_argument("--contexts", nargs="+", type=int, default=[16, 1024])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2,
                    help="--decode: intra-op threads of every run (llama.cpp's included)")
    ap.add_argument("--gguf", type=Path, default=None,
                    help="--decode: also llama.cpp (pip install llama-cpp-python) on this GGUF "
                         "(SmolLM2's: python tools/smollm2.py prints its path)")
    ap.add_argument("--hf", type=Path, default=None,
                    help="--decode: this Hugging Face folder instead of the random one of "
                         "SmolLM2's shape (the real model: benchmarks/smollm2_folder.py OUT)")
    ap.add_argument("--work", type=Path, help="keep folders here (reused: the HF folders) "
                                              "and each run's output (logs/)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-export-genai-"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    rows = decode_rows(args, work) if args.decode else export_rows(args, work)
    print(f"load average before {load}, after {os.getloadavg()} "
          f"({os.cpu_count()} cores, shared)", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
