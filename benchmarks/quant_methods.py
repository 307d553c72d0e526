"""Which int4 method: every weight matrix of a model quantized to int4 by each candidate
method, fake-quantized in the float32 reference (torch), scored teacher-forced over the
quantized tier's held-out tokens against the float32 reference: perplexity ratio, top-1
agreement (near-ties under 5e-2 excluded), mean KL(reference || quantized).

Methods: round-to-nearest (rtn) and GPTQ (calibrated on the prose corpus's training part,
export.heldout.training_text) on three grids (export/qgrid.py): onnxruntime's symmetric
grid, asymmetric with integer zero points, asymmetric with float zero points.

Usage: python benchmarks/quant_methods.py [--from-llama DIR | --pretrained tiny | --preset small]
       [--methods rtn-sym gptq-asym ...] [--block-size 32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

METHODS = ("rtn-sym", "rtn-asym", "rtn-asym_float", "gptq-sym", "gptq-asym",
           "gptq-asym_float")
MARGIN = 5e-2
CHUNK = 256


def load(args):
    from scredge.export.sources import from_llama, from_preset, from_pretrained

    if args.from_llama:
        return from_llama(args.from_llama, ())
    if args.pretrained:
        return from_pretrained(args.pretrained)
    return from_preset(args.preset)


def logprobs(model, ids: np.ndarray) -> np.ndarray:
    """Teacher-forced log-softmax [N, V] (float32) over ids[:-1], chunks threading state."""
    import torch

    out, state = [], None
    with torch.no_grad():
        for s in range(0, len(ids) - 1, CHUNK):
            e = min(s + CHUNK, len(ids) - 1)
            logits, state = model(torch.from_numpy(ids[None, s:e]),
                                  torch.arange(s, e)[None], state)
            out.append(torch.log_softmax(logits[0].double(), -1).float().numpy())
    return np.concatenate(out)


def score(ref: np.ndarray, got: np.ndarray, ids: np.ndarray) -> dict:
    t = ids[1:]
    rows = np.arange(len(t))
    ppl = lambda lp: float(np.exp(-lp[rows, t].mean()))  # noqa: E731
    top2 = np.partition(ref, -2, axis=-1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) >= MARGIN  # log-softmax margin == logit margin
    agree = (ref.argmax(-1) == got.argmax(-1))[decisive].mean()
    kl = (np.exp(ref.astype(np.float64)) * (ref - got)).sum(-1).mean()
    return {"ratio": ppl(got) / ppl(ref), "top1": float(agree), "kl": float(kl)}


def quantize_model(model, method: str, hessians, block: int):
    from scredge.export.gptq import gptq_grid
    from scredge.export.mixed import reference_matrices, untied_copy
    from scredge.export.qgrid import Grid, dequantize, rtn

    algo, kind = method.split("-", 1)
    grid = Grid(4, kind)
    q = untied_copy(model)
    from scredge.export.quantize import matrix_name

    scopes = {matrix_name(s): s for s in (hessians or {})}
    import torch

    with torch.no_grad():
        for name, w in reference_matrices(q).items():
            wn = w.detach().numpy().astype(np.float64)
            if algo == "gptq":
                parts = gptq_grid(wn, hessians[scopes[name]], grid, block)
            else:
                parts = rtn(wn, grid, block)
            w.copy_(torch.from_numpy(dequantize(*parts, block)))
    return q


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--from-llama", type=Path)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--pretrained", help="a shipped checkpoint (tiny)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--calibration-tokens", type=int, default=16384)
    ap.add_argument("--heldout-tokens", type=int, default=4096,
                    help="positions scored (the tier's 4,096 by default)")
    args = ap.parse_args()
    from scredge.export.gptq import input_hessians
    from scredge.export.heldout import heldout_ids, training_text

    src = load(args)
    model = src.model.eval()
    ids, _ = heldout_ids(model.config.vocab_size, args.heldout_tokens, src.tokenizer)
    t0 = time.perf_counter()
    ref = logprobs(model, ids)
    print(f"reference over {len(ids) - 1} held-out tokens in {time.perf_counter() - t0:.0f} s",
          flush=True)
    hessians = None
    if any(m.startswith("gptq") for m in args.methods):
        text = training_text()
        cal = (src.tokenizer.encode_text(text) if src.tokenizer is not None
               else np.frombuffer(text, np.uint8).astype(np.int64))
        hessians = input_hessians(model, cal[-args.calibration_tokens:])
    print("| method | ppl ratio | top-1 | mean KL | seconds |\n|---|---|---|---|---|", flush=True)
    for method in args.methods:
        t0 = time.perf_counter()
        q = quantize_model(model, method, hessians, args.block_size)
        s = score(ref, logprobs(q, ids), ids)
        print(f"| {method} | {s['ratio']:.4f} | {s['top1']:.2%} | {s['kl']:.4f} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
