"""Decode speed of weight-only int8 / int4 artifacts against float32, and against
onnxruntime-genai's own int4 build of the same Llama, in one run on one machine.

Models: the `small` preset, and a Llama of D 512, L 8 (~25M parameters: 8 / 4 heads,
d_ff 1376, a 2,048-token byte-level BPE trained here with `tokenizers` on our prose corpus)
built locally with `transformers` (seeded, untrained), exported with SCR in every layer
(`llama`) and without (`llama-plain`, `--scr-layers none`: exactly the model
onnxruntime-genai runs, the like-for-like comparison). scredge variants are exported with
`scredge export [--quantize ...]` (each verified at export; a variant refused by the
quantized tier is reported, not measured); the Llama's are `--from-llama`; `int4-gptq`
calibrates on the last 60,000 bytes of the prose corpus's training part. onnxruntime-genai
(`pip install 'scredge[bench]'`) builds its own int4 / float32 graphs from the same Hugging
Face folder (`python -m onnxruntime_genai.models.builder -i HF -p int4 -e cpu`, its defaults:
block 32, accuracy_level 4, RTN) and decodes through its own loop (og.Generator).

Measurement: every sample is a child process (one model in memory), the variants
alternate round after round (drift and neighbours hit all alike), batch 1, greedy, the same
random prompt of `--prompt` ids, `--tokens` generated ids, the same onnxruntime intra-op
thread count for every variant (`--threads`, default 1; genai's via its genai_config.json
session options). Decode tokens/s = 1 / median time of one generate step (the first token,
which follows the prompt, is excluded), per process; the table gives medians over rounds,
ratios to scredge float32 of the same model, each process's peak RSS (VmHWM) and the
onnxruntime graph's bytes on disk (external data included).

Goals (issue 16): int8 >= 1.8x and int4 >= 3x float32; scredge int4 >= genai int4.

Usage: python benchmarks/bench_quant.py [--models small llama] [--repeat 5] [--tokens 128]
       [--prompt 16] [--threads 1] [--variants ...] [--genai int4 fp32] [--artifacts DIR]
       [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS = {"int8": 1.8, "int4": 3.0, "int4-hqq": 3.0, "int4-gptq": 3.0}
VARIANTS = {"float32": [], "int8": ["--quantize", "int8"], "int4": ["--quantize", "int4"],
            "int4-hqq": ["--quantize", "int4", "--quant-method", "hqq"],
            "int4-gptq": ["--quantize", "int4", "--quant-method", "gptq"]}
CALIBRATION_BYTES = 60_000  # the prose corpus's training part's tail: GPTQ's text
LLAMA = dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=4, intermediate_size=1376, vocab_size=2048,
             max_position_embeddings=4096, tie_word_embeddings=False)
BOS, EOS = "<|endoftext|>", "<|im_end|>"
SPEED_ONLY_MARKER = "speed_only.json"  # in a refused variant's speed-only graph folder


def prose_bpe(vocab_size: int, bos: str, eos: str):
    """A byte-level BPE of `vocab_size` trained on scredge's prose corpus, as transformers'
    fast tokenizer (onnxruntime-genai's builder needs a tokenizer.json beside the weights)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from scredge.ref.corpus import prose_corpus

    text = prose_corpus()[:200_000].decode("utf-8", errors="ignore")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text.split("\n\n"), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[bos, eos], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos,
                                                eos_token=eos, pad_token=bos)


def make_llama(folder: Path) -> Path:
    """A seeded Llama of the issue's shape (D 512, L 8) and its BPE tokenizer, saved by
    transformers (genai's builder reads tokenizer.json, scredge --from-llama too)."""
    if (folder / "tokenizer.json").is_file():
        return folder
    import torch
    import transformers

    fast = prose_bpe(LLAMA["vocab_size"], BOS, EOS)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**LLAMA, bos_token_id=fast.bos_token_id,
                                   eos_token_id=fast.eos_token_id)
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder


def calibration_text(root: Path) -> Path:
    """GPTQ's calibration text: the end of the prose corpus's training part (the quantized
    tier scores its validation tail)."""
    path = root / "calibration.txt"
    if not path.is_file():
        from scredge.export.heldout import training_text

        path.write_bytes(training_text()[-CALIBRATION_BYTES:])
    return path


def export(model: str, variant: str, root: Path) -> Path:
    out = root / f"{model}-{variant}"
    refused = root / f"{model}-{variant}.refused"  # the export's verdict, kept for reruns
    if (out / "manifest.json").is_file():
        return out
    if refused.is_file():
        raise subprocess.CalledProcessError(2, "scredge export", refused.read_text())
    source = (["--from-llama", str(make_llama(root / "llama-hf"))] if model.startswith("llama")
              else ["--preset", model]) + (["--scr-layers", "none"] if model == "llama-plain"
                                           else [])
    calibrated = ["--calibration", str(calibration_text(root))] if "gptq" in variant else []
    cmd = [sys.executable, "-m", "scredge", "export", *source, *VARIANTS[variant], *calibrated,
           "--out", str(out), "--force"]
    print(" ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout[-2000:], proc.stderr[-2000:], sep="", flush=True)
    if proc.returncode == 2:  # refused by the quantized tier: nothing written
        refused.write_text(proc.stderr)
    proc.check_returncode()
    return out


def speed_only(model: str, variant: str, root: Path) -> Path:
    """For a variant the quantized tier refused (seeded, untrained weights give near-ties
    that int4 noise flips): the same onnxruntime-form graph, made by the same library
    function from the float32 artifact's graph, NOT an artifact (no tier, no manifest), so
    its speed can still be measured. The table marks it. (Not for gptq: its graph has the
    int4 rtn graph's form, so that one's speed stands for it.)"""
    import onnx

    from scredge.export.ort_fusions import fuse_for_onnxruntime
    from scredge.export.quantize import (
        QuantSpec,
        materialize_tied_head,
        quantize_ort,
        weight_matmuls,
    )
    from scredge.runtime.loaders import open_artifact

    out = root / f"{model}-{variant}-speed-only"
    graph = out / "model.onnx"
    if not graph.is_file():
        out.mkdir(parents=True, exist_ok=True)
        proto = onnx.load(str(root / f"{model}-float32" / "model.onnx"))
        materialize_tied_head(proto)
        flags = dict(zip(VARIANTS[variant][::2], VARIANTS[variant][1::2]))
        spec = QuantSpec.parse(flags["--quantize"], None, flags.get("--quant-method"))
        quantized = quantize_ort(proto, spec, weight_matmuls(proto))
        fuse_for_onnxruntime(quantized, open_artifact(root / f"{model}-float32").config)
        onnx.save(quantized, str(graph))
        (out / SPEED_ONLY_MARKER).write_text(json.dumps(
            {"float_artifact": str(root / f"{model}-float32"), "graph": graph.name,
             "spec": f"int{spec.bits} {spec.method} block {spec.block_size}"}))
    return out


def build_genai(precision: str, root: Path, threads: int) -> Path:
    """onnxruntime-genai's builder on the same Hugging Face folder, its CPU defaults; then
    its session options get the run's thread count."""
    out = root / f"genai-{precision}"
    if not (out / "genai_config.json").is_file():
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder",
               "-i", str(make_llama(root / "llama-hf")), "-o", str(out), "-p", precision,
               "-e", "cpu", "-c", str(root / "genai-cache")]
        print(" ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)
    cfg_path = out / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    cfg_path.write_text(json.dumps(cfg, indent=4))
    return out


def scredge_graph(folder: Path):
    """(the artifact whose config applies, the onnxruntime graph, the speed-only spec or
    None) of a scredge bench folder: an artifact, or a refused variant's speed-only graph."""
    from scredge.runtime.loaders import open_artifact

    marker = folder / SPEED_ONLY_MARKER
    if marker.is_file():  # a refused variant's graph: the float artifact's config
        meta = json.loads(marker.read_text())
        return open_artifact(Path(meta["float_artifact"])), folder / meta["graph"], meta["spec"]
    artifact = open_artifact(folder)
    return artifact, folder / artifact.graph_file("ort"), None


def graph_bytes(folder: Path) -> int:
    """Bytes of the onnxruntime graph (and its external data) a runtime loads."""
    if (folder / "genai_config.json").is_file():
        name = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"][
            "filename"]
    else:
        name = scredge_graph(folder)[1].name
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith(name))


def _result(steps: list[float], tokens: int) -> dict:
    from scredge.bench.latency import peak_rss_mib

    return {"decode_tokens_per_s": 1.0 / statistics.median(steps), "steps": len(steps),
            "expected_steps": tokens - 1, "peak_rss_mib": peak_rss_mib()}


def worker(folder: Path, prompt: int, tokens: int, threads: int) -> dict:
    """scredge's runtime: its own generation loop (greedy sampler included), as `scredge
    bench` times it."""
    import numpy as np

    from scredge.bench.latency import bench
    from scredge.runtime.loaders import load_ort, ort_session
    from scredge.runtime.runners.ort_runner import OrtRunner

    artifact, graph, speed_only_spec = scredge_graph(folder)
    if speed_only_spec:
        runner = OrtRunner(ort_session(graph, "cpu", threads=threads), artifact.config,
                           np.float32)
        precision = speed_only_spec + " (speed only: refused by the tier)"
    else:
        runner = load_ort(artifact, device="cpu", threads=threads)
        precision = artifact.precision
    r = bench(runner, prompt_len=prompt, gen_len=tokens, batch=1, warmup=1, repeat=1)
    return {**_result(r["samples"]["itl_s"], tokens), "precision": precision}


def genai_worker(folder: Path, prompt: int, tokens: int, threads: int) -> dict:
    """onnxruntime-genai's loop: append the prompt, then generate_next_token per token
    (each call runs the model on the previous token and picks greedily)."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    vocab = json.loads((folder / "genai_config.json").read_text())["model"]["vocab_size"]
    rng = np.random.default_rng(0)
    steps: list[float] = []
    for r in range(2):  # a warm-up generation, then the measured one
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=prompt + tokens, min_length=prompt + tokens,
                                  do_sample=False, batch_size=1)
        gen = og.Generator(model, params)
        gen.append_tokens(rng.integers(0, vocab, size=(1, prompt), dtype=np.int32))
        gen.generate_next_token()  # picks from the prompt's logits: TTFT, not decode
        times = []
        while not gen.is_done():
            t = time.perf_counter()
            gen.generate_next_token()
            times.append(time.perf_counter() - t)
        steps = times if r else steps
        del gen
    return {**_result(steps, tokens), "precision": "genai"}


def llamacpp_worker(gguf: Path, prompt: int, tokens: int, threads: int) -> dict:
    """llama.cpp (`llama-cpp-python`) on a GGUF file as it is: eval the prompt, then one
    eval per token of the greedy (argmax) pick of the last logits. `threads` for both
    the prompt and the token steps."""
    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    def pick(llm) -> int:  # argmax of the last token's logits, read in place (no copy)
        logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(llm.n_vocab(),))))

    steps: list[float] = []
    for r in range(2):  # a warm-up generation, then the measured one, each in a new context
        llm = Llama(model_path=str(gguf), n_ctx=prompt + tokens + 8, n_batch=512,
                    n_threads=threads, n_threads_batch=threads, verbose=False)
        ids = np.random.default_rng(0).integers(0, llm.n_vocab(), size=prompt).tolist()
        llm.eval(ids)
        tok = pick(llm)  # from the prompt's logits: TTFT, not decode
        times = []
        for _ in range(tokens - 1):
            t = time.perf_counter()
            llm.eval([tok])
            tok = pick(llm)
            times.append(time.perf_counter() - t)
        steps = times if r else steps
        llm.close()
    return {**_result(steps, tokens), "precision": "llama.cpp " + gguf.name}


def measure(folder: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(folder), "--prompt", str(args.prompt),
           "--tokens", str(args.tokens), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"worker failed on {folder}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(model: str, rows: dict, args) -> list[str]:
    lines = [f"\n{model}: decode tokens/s, batch 1, prompt {args.prompt}, {args.tokens} new "
             f"tokens, {args.threads} intra-op thread(s), median of {args.repeat} alternating "
             f"processes"]
    for v, row in rows.items():
        goal = GOALS.get(v.split()[0])
        verdict = "" if goal is None else (
            f"  goal >= {goal}x: {'met' if row['ratio'] >= goal else 'MISSED'}")
        if "vs_genai_int4" in row:
            verdict += f"  vs genai int4 {row['vs_genai_int4']:.2f}x"
        lines.append(f"  {v:14s} {row['decode_tokens_per_s']:9.1f} tok/s  {row['ratio']:5.2f}x"
                     f"  (samples {', '.join(f'{s:.0f}' for s in row['samples'])})"
                     f"  peak RSS {row['peak_rss_mib']:6.0f} MiB  graph "
                     f"{row['graph_mib']:7.1f} MiB{verdict}")
    return lines


def run(args) -> dict:
    root = Path(args.artifacts or tempfile.mkdtemp(prefix="bench_quant-"))
    root.mkdir(parents=True, exist_ok=True)
    report = {"load_before": os.getloadavg()}
    for model in args.models:
        folders = {}
        for v in args.variants:
            try:
                folders[v] = export(model, v, root)
            except subprocess.CalledProcessError:  # refused at export (missed its tier)
                report.setdefault("refused", []).append(f"{model} {v}")
                if args.speed_only and v != "float32" and "gptq" not in v:
                    print(f"  {model} {v}: refused at export; its graph is measured for "
                          "speed only", flush=True)
                    folders[v + " (speed only)"] = speed_only(model, v, root)
                else:
                    print(f"  {model} {v}: refused at export, not measured", flush=True)
        if model.startswith("llama"):
            for p in args.genai:
                folders[f"genai-{p}"] = build_genai(p, root, args.threads)
        if "float32" not in folders:
            continue
        samples: dict[str, list[dict]] = {v: [] for v in folders}
        for _ in range(args.repeat):
            for v, folder in folders.items():
                samples[v].append(measure(folder, args))
        rows = {}
        for v, runs in samples.items():
            tps = [r["decode_tokens_per_s"] for r in runs]
            rows[v] = {"decode_tokens_per_s": statistics.median(tps), "samples": tps,
                       "precision": runs[0]["precision"],
                       "steps": [r["steps"] for r in runs],
                       "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
                       "graph_mib": graph_bytes(folders[v]) / 2**20}
        base = rows["float32"]["decode_tokens_per_s"]
        genai4 = rows.get("genai-int4", {}).get("decode_tokens_per_s")
        for v, row in rows.items():
            row["ratio"] = row["decode_tokens_per_s"] / base
            if genai4 and v.startswith("int4"):
                row["vs_genai_int4"] = row["decode_tokens_per_s"] / genai4
        print("\n".join(table(model, rows, args)), flush=True)
        report[model] = rows
    report["load_after"] = os.getloadavg()
    print(f"\nload average (1, 5, 15 min) before {report['load_before']}, after "
          f"{report['load_after']}: a shared 2-core machine", flush=True)
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["small", "llama"],
                   choices=["tiny", "small", "llama", "llama-plain"],
                   help="llama-plain: the same Llama exported with --scr-layers none, the "
                        "model onnxruntime-genai runs")
    p.add_argument("--variants", nargs="+", default=["float32", "int8", "int4"],
                   choices=list(VARIANTS), help="float32 first: the baseline")
    p.add_argument("--genai", nargs="*", default=["int4", "fp32"], choices=["int4", "fp32"],
                   help="onnxruntime-genai builds of the Llama to measure (none: skip)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--tokens", type=int, default=128, help="decode tokens per run")
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--artifacts", type=Path, help="export into (and reuse) this folder")
    p.add_argument("--speed-only", action="store_true",
                   help="measure a refused variant's graph anyway (marked; not an artifact)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        fn = (llamacpp_worker if args.worker.suffix == ".gguf" else genai_worker
              if (args.worker / "genai_config.json").is_file() else worker)
        print(json.dumps(fn(args.worker, args.prompt, args.tokens, args.threads)))
        return
    report = run(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
