"""Quality of quantized artifacts next to onnxruntime-genai's int4 build of the same model,
scored on the same held-out tokens (docs/quantization-quality.md).

Our artifacts' figures are the quantized tier's, as measured at export and recorded in their
config.json (perplexity ratio, top-1 agreement over decisive positions, mean KL over the
reference's top-32 tokens plus the rest as one bucket). onnxruntime-genai's graph
(`python -m onnxruntime_genai.models.builder -i HF -o OUT -p int4 -e cpu`) is run by
onnxruntime teacher-forced over the same held-out ids, in the same 256-token chunks
threading its cache, and judged against the same stored reference (the int4 artifact's
parity/heldout.npz) by the same code (scredge.quantized_tier). Then the folders' sizes,
the fraction of projection weights in int4, and greedy chat answers of the float32 model
(transformers), our artifacts (`scredge generate --chat --greedy`) and genai's (og.Generator).

Usage: python benchmarks/quant_quality.py --hf HF --genai GENAI_DIR ARTIFACT [ARTIFACT ...]
       [--prompts "..." ...] [--max-new-tokens 48] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.",
           "How many legs does a spider have?")
TRT_FILES = ("model.trt.onnx", "model.trt.onnx.data")
REFERENCE_FILES = ("model.safetensors",)


def folder_bytes(folder: Path, leave_out: tuple[str, ...] = ()) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*")
               if p.is_file() and p.name not in leave_out)


def genai_step(folder: Path):
    """onnxruntime-genai's graph as a stateful step(ids, positions) -> logits (its cache
    shape from genai_config.json: kv heads, head size)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    kv = [n for n in names if n.startswith("past_key_values")]
    dec = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    past = {n: np.zeros((1, dec["num_key_value_heads"], 0, dec["head_size"]), np.float32)
            for n in kv}
    outs = [o.name for o in sess.get_outputs()]

    def step(ids: np.ndarray, pos: np.ndarray) -> np.ndarray:
        total = int(pos[0, -1]) + 1
        feed = {"input_ids": ids, "attention_mask": np.ones((1, total), np.int64), **past}
        if "position_ids" in names:
            feed["position_ids"] = pos
        res = dict(zip(outs, sess.run(None, feed)))
        for n in kv:
            past[n] = res[n.replace("past_key_values", "present")]
        return res["logits"]

    return step


def score_genai(folder: Path, heldout) -> dict:
    from scredge.quantized_tier import compare, teacher_forced_stats

    got = teacher_forced_stats(genai_step(folder), heldout.ids, ref=heldout.ref)
    rep = compare(heldout, got, 4, "onnxruntime-genai model.onnx")
    return {"ratio": rep.ratio, "top1": rep.top1, "kl": float(np.mean(got.kl)),
            "passed": rep.passed, "summary": rep.summary()}


def genai_int4_fraction(folder: Path) -> float:
    import onnx

    g = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    got = {4: 0, 8: 0}
    for n in g.graph.node:
        if n.op_type == "MatMulNBits" and "lm_head" not in n.name:
            a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            got[a["bits"]] = got.get(a["bits"], 0) + a["K"] * a["N"]
    return got[4] / max(sum(got.values()), 1)


def answers_ours(folder: Path, prompts, n: int) -> list[str]:
    out = []
    for p in prompts:
        r = subprocess.run([sys.executable, "-m", "scredge", "generate", str(folder), "--chat",
                            "--prompt", p, "--greedy", "--max-new-tokens", str(n),
                            "--backend", "ort", "--json"],
                           capture_output=True, text=True, check=True)
        out.append(json.loads(r.stdout)["text"].strip())
    return out


def answers_float(hf: Path, prompts, n: int) -> list[str]:
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(hf)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    out = []
    for p in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": p}],
                                      add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=n, do_sample=False)
        out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return out


def answers_genai(folder: Path, hf: Path, prompts, n: int) -> list[str]:
    import onnxruntime_genai as og
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(hf)
    model = og.Model(str(folder))
    out = []
    for p in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": p}],
                                      add_generation_prompt=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + n)
        gen = og.Generator(model, params)
        gen.append_tokens(np.array(ids, np.int32))
        new = []
        while not gen.is_done() and len(new) < n:
            gen.generate_next_token()
            new.append(int(gen.get_next_tokens()[0]))
        out.append(tok.decode(new, skip_special_tokens=True).strip())
    return out


def ours(folder: Path) -> dict:
    q = json.loads((folder / "config.json").read_text())["quantization"]
    row = {"folder": str(folder), "bytes": folder_bytes(folder),
           "bytes_ort_only": folder_bytes(folder, TRT_FILES + REFERENCE_FILES)}
    for b in ("ort", "trt"):
        v, g = q["verification"][b], q["graphs"][b]
        row[b] = {"ratio": v["ratio"], "top1": v["top1"], "kl": v.get("kl"),
                  "int4_projection_weights": g.get("int4_projection_weights"),
                  "mean_bits_per_weight": g.get("mean_bits_per_weight")}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--hf", type=Path, required=True)
    ap.add_argument("--genai", type=Path, required=True)
    ap.add_argument("--prompts", nargs="+", default=list(PROMPTS))
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--no-answers", action="store_true")
    ap.add_argument("--no-score", action="store_true", help="greedy answers only")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from scredge.quantized_tier import Heldout

    result = {"ours": [ours(a) for a in args.artifacts]}
    for row in result["ours"]:
        print(json.dumps(row), flush=True)
    if not args.no_score:
        heldout = Heldout.load(args.artifacts[0] / "parity" / "heldout.npz")
        result["genai"] = {**score_genai(args.genai, heldout),
                           "bytes": folder_bytes(args.genai),
                           "int4_projection_weights": genai_int4_fraction(args.genai)}
        print(json.dumps(result["genai"]), flush=True)
    if not args.no_answers:
        n = args.max_new_tokens
        result["answers"] = {"prompts": args.prompts,
                             "float32": answers_float(args.hf, args.prompts, n),
                             "genai int4": answers_genai(args.genai, args.hf, args.prompts, n),
                             **{a.name: answers_ours(a, args.prompts, n)
                                for a in args.artifacts}}
        print(json.dumps(result["answers"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
