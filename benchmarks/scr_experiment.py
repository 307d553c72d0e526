"""SCR against a plain transformer beyond the attention window, on the long-range corpus.

Trains the same `tiny`-sized model twice with a small window, with SCR in every layer and
without SCR, on the same seeded key/recall documents (`scredge train --corpus longrange`,
same steps, seed and batches), each in its own process (peak RSS from wait4). Then
measures, on documents generated from another seed (never trained on):

- loss (nats/byte) on the recalled key words, which no model can predict from inside its
  window (the previous mention is >= gap_min bytes back), on every other byte, and by
  position inside / beyond the window;
- recall accuracy: a recalled word counts when greedy decoding reproduces all of it after
  "The key is " (teacher-forced argmax over the word = what greedy generation emits);
- free-running consistency: sampled continuations of each document's first bytes; of the
  "The key is <word>" sentences the model writes, the fraction naming the document's key;
- sequence-level entropy of those generations (mean predictive entropy per byte) and
  their diversity (distinct 4-grams);
- attention head deviation: the mean Jensen-Shannon divergence between consecutive
  layers' head-averaged attention rows over the held-out documents (how much attention
  changes from a layer to the next);
- time and memory: training s/step and peak RSS, decode ms/token, decode state bytes.

    python benchmarks/scr_experiment.py [--steps 1000] [--out benchmarks/results/scr_experiment]

Writes results.json, results.md (the table) and scr_experiment.png into --out; trained
runs are kept there and reused unless --retrain.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"scr": "all", "baseline": "none"}  # --scr-layers for each run
PROMPT_BYTES = 48  # generation prompts: each document's first bytes (header included)


def train_variant(name: str, out: Path, args) -> None:
    """Runs `scredge train` in a child process; its peak RSS and time go to rusage.json."""
    run = out / name
    cmd = [sys.executable, "-m", "scredge", "train", "--preset", "tiny",
           "--window", str(args.window), "--scr-layers", VARIANTS[name], "--corpus", "longrange",
           "--docs", str(args.docs), "--doc-bytes", str(args.doc_bytes),
           "--recall-gap", f"{args.gap[0]},{args.gap[1]}", "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
           "--lr", str(args.lr), "--seed", "0", "--eval-every", str(max(1, args.steps // 10)),
           "--log-every", str(max(1, args.steps // 20)), "--device", args.device,
           "--out", str(run)]
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"training {name} failed (exit {child.returncode})")
    (run / "rusage.json").write_text(json.dumps({
        "peak_rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
        "process_s": time.perf_counter() - t0}))


def load_log(run: Path) -> dict:
    log = json.loads((run / "train_log.json").read_text())
    log.update(json.loads((run / "rusage.json").read_text()))
    return log


def teacher_forced(model, corpus, n_docs: int, window: int) -> dict:
    """Per-byte NLL by category and greedy recall accuracy over the first n_docs."""
    import torch
    import torch.nn.functional as F

    nll_recall, nll_first, nll_other, nll_in, nll_out = [], [], [], [], []
    first_ok, word_ok, per_doc = [], [], []
    bounds = list(corpus.doc_offsets[:n_docs + 1]) + [len(corpus.data)]
    for d in range(min(n_docs, len(corpus.doc_offsets))):
        start, stop = int(bounds[d]), int(bounds[d + 1])
        doc = np.frombuffer(corpus.data[start:stop], np.uint8).astype(np.int64)
        ids = torch.from_numpy(doc[None, :-1])
        with torch.no_grad():
            logits, _ = model(ids, torch.arange(ids.shape[1])[None])
        logp = F.log_softmax(logits[0].double(), dim=-1)  # [T,V]: predicts doc[1:]
        target = torch.from_numpy(doc[1:])
        nll = -logp.gather(1, target[:, None])[:, 0].numpy()  # nll[i]: byte i+1 of the doc
        pred = logp.argmax(-1).numpy()
        is_recall = np.zeros(len(nll), bool)
        in_doc = (corpus.recall_offsets >= start) & (corpus.recall_offsets < stop)
        per_doc.append([])
        for off, k in zip(corpus.recall_offsets[in_doc], corpus.recall_keys[in_doc]):
            word = corpus.keys[k]
            idx = np.arange(off - start - 1, off - start - 1 + len(word))  # predicting the word
            is_recall[idx] = True
            nll_first.append(nll[idx[0]])
            first_ok.append(pred[idx[0]] == doc[idx[0] + 1])
            word_ok.append(bool((pred[idx] == doc[idx + 1]).all()))
            per_doc[-1].append(word_ok[-1])
        position = np.arange(1, len(doc))
        nll_recall.append(nll[is_recall])
        nll_other.append(nll[~is_recall])
        nll_in.append(nll[(position < window) & ~is_recall])
        nll_out.append(nll[(position >= window) & ~is_recall])
    cat = np.concatenate
    return {"loss_recall_word": float(cat(nll_recall).mean()),
            "loss_recall_first_byte": float(np.mean(nll_first)),
            "loss_other_bytes": float(cat(nll_other).mean()),
            "loss_positions_inside_window": float(cat(nll_in).mean()),
            "loss_positions_beyond_window": float(cat(nll_out).mean()),
            "recall_first_byte_accuracy": float(np.mean(first_ok)),
            "recall_word_accuracy": float(np.mean(word_ok)), "recalls": len(word_ok),
            "recall_by_document": [[bool(x) for x in d] for d in per_doc]}


def bootstrap_by_document(a: list[list[bool]], b: list[list[bool]] | None = None,
                          n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of recall accuracy (or of a - b, paired on the same documents),
    resampling whole documents: recalls in one document share its key, so they are not
    independent trials."""
    rng = np.random.default_rng(seed)
    hits_a = np.array([sum(d) for d in a], float)
    counts = np.array([len(d) for d in a], float)
    hits_b = None if b is None else np.array([sum(d) for d in b], float)
    stats = []
    for _ in range(n):
        i = rng.integers(0, len(a), len(a))
        value = hits_a[i].sum() / counts[i].sum()
        if hits_b is not None:
            value -= hits_b[i].sum() / counts[i].sum()
        stats.append(value)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def free_running(model, corpus, n_docs: int, new_bytes: int, temperature: float) -> dict:
    """Sampled continuations of each document's first PROMPT_BYTES, in one batch."""
    import torch

    from scredge.ref.generation import decode_step, prefill

    n = min(n_docs, len(corpus.doc_offsets))
    prompts = np.stack([np.frombuffer(corpus.data[o:o + PROMPT_BYTES], np.uint8)
                        for o in corpus.doc_offsets[:n]]).astype(np.int64)
    rng = np.random.default_rng(0)
    logits, state = prefill(model, torch.from_numpy(prompts))
    out, entropies = [], []
    t0 = time.perf_counter()
    for step in range(new_bytes):
        logp = torch.log_softmax(logits.double(), dim=-1).numpy()  # [B,V]
        entropies.append(-(np.exp(logp) * logp).sum(-1))
        p = np.exp(logp / temperature)
        p /= p.sum(-1, keepdims=True)
        token = np.array([rng.choice(p.shape[1], p=row) for row in p])
        out.append(token)
        logits, state = decode_step(model, torch.from_numpy(token), PROMPT_BYTES + step, state)
    ms_per_token = 1e3 * (time.perf_counter() - t0) / new_bytes
    texts = [bytes(row.astype(np.uint8)).decode("latin-1") for row in np.stack(out, 1)]
    named, right = 0, 0
    for text, k in zip(texts, corpus.doc_keys[:n]):
        for word in re.findall(r"The key is ([a-z]+)", text):
            named += 1
            right += word == corpus.keys[k]
    grams = [t[i:i + 4] for t in texts for i in range(len(t) - 3)]
    return {"recall_sentences_written": named,
            "recall_consistency": right / named if named else float("nan"),
            "entropy_per_byte": float(np.mean(entropies)),
            "distinct_4grams": len(set(grams)) / max(1, len(grams)),
            "decode_ms_per_token_batch": ms_per_token, "batch": n,
            "sample": texts[0][:300]}


def attention_deviation(model, corpus, n_docs: int) -> dict:
    """Attention head deviation (scredge.ref.attention_stats) over the first n_docs, each
    document's value weighted by its positions."""
    import torch

    from scredge.ref.attention_stats import head_deviation

    bounds = list(corpus.doc_offsets[:n_docs + 1]) + [len(corpus.data)]
    pairs, positions = 0.0, 0
    for d in range(min(n_docs, len(corpus.doc_offsets))):
        doc = np.frombuffer(corpus.data[int(bounds[d]):int(bounds[d + 1])], np.uint8)
        result = head_deviation(model, torch.from_numpy(doc.astype(np.int64)[None, :-1]))
        pairs = pairs + np.array(result.per_layer_pair) * result.positions
        positions += result.positions
    per_pair = pairs / positions
    return {"head_deviation": float(per_pair.mean()),
            "head_deviation_per_layer_pair": [float(v) for v in per_pair]}


def state_bytes(config) -> int:
    """Decode state per sequence: K and V of W-1 positions per layer, SCR num/den."""
    kv = 2 * config.n_layers * (config.window - 1) * config.n_kv_heads * config.head_dim * 4
    return kv + len(config.scr_layers) * (config.d_model + 1) * 4


def evaluate(out: Path, args) -> dict:
    from scredge.ref.checkpoint import load_checkpoint
    from scredge.ref.corpus import LongRangeCorpus

    held_out = LongRangeCorpus.generate(seed=1, n_docs=args.eval_docs,
                                        doc_bytes=args.doc_bytes, gap_min=args.gap[0],
                                        gap_max=args.gap[1])
    results = {"held_out_corpus": held_out.describe()}
    for name in VARIANTS:
        model = load_checkpoint(out / name / "model.safetensors")  # in eval mode
        log = load_log(out / name)
        r = {"scr_layers": list(model.config.scr_layers), "window": model.config.window,
             "parameters": sum(p.numel() for p in model.parameters()),
             "final_val_loss": log["final_val_loss"],
             "train_s_per_step": (log["train_config"]["batch_size"]
                                  * log["train_config"]["seq_len"] / log["tokens_per_s"]),
             "train_peak_rss_mib": log["peak_rss_mib"],
             "decode_state_bytes": state_bytes(model.config),
             "val_curve": log.get("evals", [])}
        r |= teacher_forced(model, held_out, args.eval_docs, args.window)
        r |= attention_deviation(model, held_out, args.eval_docs)
        r |= free_running(model, held_out, args.gen_docs, args.gen_bytes, args.temperature)
        results[name] = r
        print(name, {k: v for k, v in r.items()
                     if k not in ("val_curve", "sample", "recall_by_document")}, flush=True)
    for name in VARIANTS:
        results[name]["recall_ci95"] = bootstrap_by_document(
            results[name]["recall_by_document"])
    results["recall_difference_ci95"] = bootstrap_by_document(
        results["scr"]["recall_by_document"], results["baseline"]["recall_by_document"])
    return results


ROWS = [  # (label, key, format)
    ("validation loss, all bytes (nats/byte)", "final_val_loss", "{:.3f}"),
    ("loss on recalled key words (needs > W context)", "loss_recall_word", "{:.3f}"),
    ("loss on a recalled word's first byte", "loss_recall_first_byte", "{:.3f}"),
    ("loss on every other byte", "loss_other_bytes", "{:.3f}"),
    ("loss at positions < W (inside the window)", "loss_positions_inside_window", "{:.3f}"),
    ("loss at positions >= W (beyond the window)", "loss_positions_beyond_window", "{:.3f}"),
    ("recall accuracy, greedy whole word (chance 1/16)", "recall_word_accuracy", "{:.1%}"),
    ("free-running: recalls naming the document's key", "recall_consistency", "{:.1%}"),
    ("free-running: entropy per byte (nats)", "entropy_per_byte", "{:.3f}"),
    ("free-running: distinct 4-grams", "distinct_4grams", "{:.3f}"),
    ("attention head deviation: JSD between consecutive layers (nats, <= ln 2)",
     "head_deviation", "{:.3f}"),
    ("training time per step (s)", "train_s_per_step", "{:.3f}"),
    ("training peak RSS (MiB)", "train_peak_rss_mib", "{:.0f}"),
    ("decode time per step, batch of prompts (ms)", "decode_ms_per_token_batch", "{:.2f}"),
    ("decode state per sequence (bytes)", "decode_state_bytes", "{:,}"),
    ("parameters", "parameters", "{:,}"),
]


def table(results: dict) -> str:
    scr, base = results["scr"], results["baseline"]
    lines = ["| measure | SCR (all layers) | baseline (no SCR) | SCR / baseline |",
             "|---|---|---|---|"]
    for label, key, fmt in ROWS:
        a, b = scr[key], base[key]
        ratio = f"{a / b:.2f}" if isinstance(a, (int, float)) and b else "—"
        lines.append(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {ratio} |")
    ci = [scr["recall_ci95"], base["recall_ci95"], results["recall_difference_ci95"]]
    lines.append("| recall accuracy, 95 % interval by document (last column: SCR - "
                 "baseline) | {:.1%} to {:.1%} | {:.1%} to {:.1%} | {:+.1%} to {:+.1%} |"
                 .format(*ci[0], *ci[1], *ci[2]))
    return "\n".join(lines)


def plot(results: dict, path: Path, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, style in (("scr", "-"), ("baseline", "--")):
        curve = results[name]["val_curve"]
        if curve:
            ax1.plot([c["step"] for c in curve], [c["val_loss"] for c in curve], style,
                     label=name)
    ax1.set_xlabel("step")
    ax1.set_ylabel("validation loss (nats/byte)")
    ax1.set_title(f"training, window {window}")
    ax1.legend()
    keys = ["loss_positions_inside_window", "loss_positions_beyond_window",
            "loss_other_bytes", "loss_recall_word"]
    labels = ["pos < W", "pos >= W", "other bytes", "recalled key"]
    x = np.arange(len(keys))
    for i, name in enumerate(("scr", "baseline")):
        ax2.bar(x + (i - 0.5) * 0.38, [results[name][k] for k in keys], 0.38, label=name)
    ax2.set_xticks(x, labels)
    ax2.set_ylabel("held-out loss (nats/byte)")
    ax2.set_title("where the loss is")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=32, help="attention window, tokens")
    parser.add_argument("--gap", type=lambda t: tuple(int(v) for v in t.split(",")),
                        default=(64, 160), help="MIN,MAX bytes from a key mention to its "
                        "recall; keep MIN above --window")
    parser.add_argument("--doc-bytes", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--docs", type=int, default=600, help="training documents")
    parser.add_argument("--eval-docs", type=int, default=40, help="held-out documents")
    parser.add_argument("--gen-docs", type=int, default=16)
    parser.add_argument("--gen-bytes", type=int, default=768)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" /
                        "scr_experiment")
    parser.add_argument("--device", default="cpu", help="training device: cpu or cuda "
                        "(evaluation runs on the CPU)")
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args(argv)
    if args.gap[0] <= args.window:
        parser.error(f"--gap minimum {args.gap[0]} must exceed --window {args.window}: "
                     "otherwise the recall is predictable from inside the window")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in VARIANTS:
        done = (args.out / name / "rusage.json").is_file()
        if args.retrain or not done:
            if args.retrain and (args.out / name).exists():
                import shutil

                shutil.rmtree(args.out / name)
            train_variant(name, args.out, args)
    results = evaluate(args.out, args)
    results["settings"] = {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    (args.out / "results.md").write_text(text + "\n")
    plot(results, args.out / "scr_experiment.png", args.window)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
