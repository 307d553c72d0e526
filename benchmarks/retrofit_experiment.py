"""Retrofit: SCR trained into a pretrained plain model, against continuing the plain model.

1. Pretrain a plain (no SCR) `tiny`-sized model, window W shorter than the key distance,
   on the long-range corpus (`scredge train --scr-layers none --corpus longrange`).
2. From that checkpoint, for the same steps, batches and tokens (same seed):
   (a) retrofit: `scredge train --init PRETRAIN --scr-layers all --trainable scr`: SCR
       layers added at gamma = 0, only their parameters train, the base stays frozen;
   (b) baseline: `scredge train --init PRETRAIN --trainable all`: the plain model trained on.
3. Evaluate both (and the pretrained model) on held-out documents with
   benchmarks/scr_experiment.py's functions: loss on recalled key words and on other bytes,
   greedy recall accuracy with 95 % intervals resampling whole documents, free-running
   recall; training cost (s/step, peak RSS, trained parameters); and the attention head
   deviation (mean Jensen-Shannon divergence between consecutive layers' head-averaged
   attention rows, scredge.ref.attention_stats, as scr_experiment.py measures it).

    python benchmarks/retrofit_experiment.py [--pretrain-steps 800] [--steps 1200]

Writes results.json, results.md and each run's train log into --out (default
benchmarks/results/retrofit_experiment); trained runs are kept there and reused unless
--retrain.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scr_experiment as base  # noqa: E402  (corpus evaluation, intervals, the table)

REPO = Path(__file__).resolve().parents[1]
RUNS = ("pretrain", "scr", "baseline")  # scr / baseline: the table's two columns
# The default model: smaller than `tiny` (d_model 128, 4 layers) so the three runs and the
# evaluation finish in ~20 minutes on a shared two-core CPU; --preset tiny for the larger one.
SMALL_CPU = {"vocab_size": 256, "d_model": 64, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2,
             "d_ff": 192, "scr_layers": []}


def corpus_args(args) -> list[str]:
    return ["--corpus", "longrange", "--docs", str(args.docs), "--doc-bytes",
            str(args.doc_bytes), "--recall-gap", f"{args.gap[0]},{args.gap[1]}",
            "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
            "--lr", str(args.lr), "--threads", str(args.threads), "--device", args.device]


def command(name: str, out: Path, args) -> list[str]:
    """The `scredge train` command of each run."""
    if name == "pretrain":
        model = (["--preset", args.preset] if args.preset
                 else ["--config", str(out / "model_config.json")])
        steps, how = args.pretrain_steps, [*model, "--window", str(args.window),
                                           "--scr-layers", "none", "--seed", "0"]
    else:  # both continuations: the same seed, so the same batches in the same order
        steps, how = args.steps, ["--init", str(out / "pretrain"), "--seed", "1"]
        how += (["--scr-layers", "all", "--trainable", "scr"] if name == "scr"
                else ["--trainable", "all"])
    every = max(1, steps // 8)
    return [sys.executable, "-m", "scredge", "train", *how, *corpus_args(args),
            "--steps", str(steps), "--eval-every", str(every), "--log-every", str(every),
            "--checkpoint-every", str(steps), "--out", str(out / name)]


def run(name: str, out: Path, args) -> None:
    """One training run in a child process; its peak RSS and time go to rusage.json."""
    cmd = command(name, out, args)
    print("$", " ".join(cmd[2:]), flush=True)
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training {name} failed")
    (out / name / "rusage.json").write_text(json.dumps({
        "peak_rss_mib": usage.ru_maxrss / 1024, "process_s": time.perf_counter() - t0}))


def evaluate(out: Path, args) -> dict:
    from scredge.ref.checkpoint import load_checkpoint
    from scredge.ref.corpus import LongRangeCorpus

    held_out = LongRangeCorpus.generate(seed=1, n_docs=args.eval_docs, doc_bytes=args.doc_bytes,
                                        gap_min=args.gap[0], gap_max=args.gap[1])
    results = {"held_out_corpus": held_out.describe()}
    for name in RUNS:
        model = load_checkpoint(out / name / "model.safetensors")
        log = base.load_log(out / name)
        tc = log["train_config"]
        r = {"scr_layers": list(model.config.scr_layers), "window": model.config.window,
             "parameters": sum(p.numel() for p in model.parameters()),
             "trained_parameters": log.get("trained_parameters", log["parameters"]),
             "trainable": log.get("trainable", "all"), "steps": tc["steps"],
             "tokens": tc["steps"] * tc["batch_size"] * tc["seq_len"],
             "final_val_loss": log["final_val_loss"],
             "step0_val_loss": log["evals"][0]["val_loss"],
             "train_s_per_step": tc["batch_size"] * tc["seq_len"] / log["tokens_per_s"],
             "train_s": log["wall_time_s"], "train_peak_rss_mib": log["peak_rss_mib"],
             "decode_state_bytes": base.state_bytes(model.config), "val_curve": log["evals"]}
        r |= base.teacher_forced(model, held_out, args.eval_docs, args.window)
        r |= base.free_running(model, held_out, args.gen_docs, args.gen_bytes, args.temperature)
        r |= base.attention_deviation(model, held_out, args.eval_docs)
        r["recall_ci95"] = base.bootstrap_by_document(r["recall_by_document"])
        results[name] = r
        print(name, {k: v for k, v in r.items()
                     if k not in ("val_curve", "sample", "recall_by_document")}, flush=True)
    results["recall_difference_ci95"] = base.bootstrap_by_document(
        results["scr"]["recall_by_document"], results["baseline"]["recall_by_document"])
    return results


EXTRA_ROWS = [  # beyond scr_experiment.ROWS (which has the head deviation)
    ("trained parameters", "trained_parameters", "{:,}"),
    ("training wall time of this phase (s)", "train_s", "{:.0f}"),
]


def table(results: dict) -> str:
    lines = base.table(results).splitlines()
    lines[0] = ("| measure | (a) retrofit: SCR added, SCR only trained | (b) plain model "
                "trained on | (a) / (b) |")
    for label, key, fmt in EXTRA_ROWS:
        a, b = results["scr"][key], results["baseline"][key]
        ratio = f"{a / b:.2f}" if b else "—"
        lines.append(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {ratio} |")
    pre = results["pretrain"]
    lines.append(f"\nStarting point (the pretrained plain model, {pre['steps']} steps, "
                 f"{pre['tokens']:,} tokens, {pre['train_s']:.0f} s): validation loss "
                 f"{pre['final_val_loss']:.3f}, loss on recalled key words "
                 f"{pre['loss_recall_word']:.3f}, recall accuracy "
                 f"{pre['recall_word_accuracy']:.1%} ({pre['recall_ci95'][0]:.1%} to "
                 f"{pre['recall_ci95'][1]:.1%}), head deviation {pre['head_deviation']:.4f}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", help="a named model (e.g. tiny) instead of SMALL_CPU")
    p.add_argument("--window", type=int, default=32, help="attention window, tokens")
    p.add_argument("--gap", type=lambda t: tuple(int(v) for v in t.split(",")),
                   default=(48, 128), help="MIN,MAX bytes from a key mention to its recall")
    p.add_argument("--doc-bytes", type=int, default=1024)
    p.add_argument("--pretrain-steps", type=int, default=800)
    p.add_argument("--steps", type=int, default=1200, help="steps of each continuation")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=192)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--docs", type=int, default=400, help="training documents")
    p.add_argument("--eval-docs", type=int, default=40, help="held-out documents")
    p.add_argument("--gen-docs", type=int, default=16)
    p.add_argument("--gen-bytes", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="training device (evaluation: CPU)")
    p.add_argument("--out", type=Path,
                   default=REPO / "benchmarks" / "results" / "retrofit_experiment")
    p.add_argument("--retrain", action="store_true")
    args = p.parse_args(argv)
    if args.gap[0] <= args.window:
        p.error("--gap minimum must exceed --window (else the recall is inside the window)")
    args.out.mkdir(parents=True, exist_ok=True)
    from scredge.config import SCRConfig

    model = SCRConfig(**{**SMALL_CPU, "scr_layers": (), "window": args.window})
    (args.out / "model_config.json").write_text(json.dumps({"model": model.to_dict()}, indent=1))
    t0 = time.perf_counter()
    for name in RUNS:
        if args.retrain and (args.out / name).exists():
            shutil.rmtree(args.out / name)
        if not (args.out / name / "rusage.json").is_file():
            run(name, args.out, args)
    import torch

    torch.set_num_threads(args.threads)
    t_eval = time.perf_counter()
    results = evaluate(args.out, args)
    results["evaluation_wall_s"] = time.perf_counter() - t_eval
    results["training_wall_s"] = {name: results[name]["train_s"] for name in RUNS}
    results["settings"] = {k: (str(v.relative_to(REPO)) if isinstance(v, Path)
                               and v.is_relative_to(REPO) else str(v) if isinstance(v, Path)
                               else v) for k, v in vars(args).items()}
    results["invocation_wall_s"] = time.perf_counter() - t0  # runs reused count as 0
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    for name in RUNS:  # the run folders are not committed; their logs are
        shutil.copyfile(args.out / name / "train_log.json", args.out / f"{name}_train_log.json")
    text = table(results)
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
