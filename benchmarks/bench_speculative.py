"""Speculative decoding on SmolLM2-135M-Instruct: plain greedy decoding against n-gram
prompt lookup and a draft model, same run, same prompts, batch 1, onnxruntime on the CPU.

Task (copy-heavy chat, where prompt lookup pays): the user gives a text and asks for it
back (repeated exactly, or as a numbered list). Greedy ids must be identical to plain
decoding's; the speed-up is the median decode time (first token to last) over --repeat
runs, plain / speculative. Acceptance rate = accepted drafts / proposed drafts; tokens per
call = tokens taken / target calls in the decode.

The draft is a layer-truncated copy of the same model (its first --draft-layers of 30
layers, no training): a real second artifact with the same tokenizer, but a poor
predictor of the full model, so its acceptance rate is low. It shows the draft path
works end to end; it is no claim about a trained draft.

Goal (issue 31): n-gram >= 1.5x faster than plain greedy, identical ids.

    python benchmarks/bench_speculative.py [--work /tmp/smollm2] [--repeat 3] [--k 4 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

TEXT = ("The committee met on Tuesday to review the budget for the new library. Members "
        "agreed that the reading room needs better lighting, that the children's section "
        "should move to the ground floor, and that the opening hours on weekends should be "
        "extended until eight in the evening. The treasurer noted that the costs of the "
        "lighting would be covered by last year's surplus, while the move of the children's "
        "section would need a grant from the city council.")
TASKS = {
    "repeat": f"Repeat the following text exactly, word for word:\n\n{TEXT}",
    "list": f"Rewrite the following text as a numbered list of its decisions:\n\n{TEXT}",
}


def run(engine, prompt_ids, n, speculative, k):
    kw = {} if speculative is None else {"speculative": speculative, "speculative_k": k}
    r = engine.generate(prompt_ids, n, temperature=0, **kw)
    return r, r.timing["total_s"] - r.timing["ttft_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/smollm2"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=160)
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--draft-layers", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    from smollm2 import artifact

    from scredge.runtime import Engine

    target = Engine.load(artifact(a.work), backend="ort", device="cpu", threads=a.threads)
    draft = Engine.load(artifact(a.work, a.draft_layers), backend="ort", device="cpu",
                        threads=a.threads)
    print(f"target {target.artifact.folder} ({target.config.n_layers} layers), draft "
          f"{draft.artifact.folder} ({draft.config.n_layers} layers, layer-truncated, "
          f"untrained); {a.tokens} new tokens, greedy, median of {a.repeat}")
    methods = [("plain", None, 0)] + [(f"ngram k={k}", "ngram", k) for k in a.k] + [
        (f"draft-l{a.draft_layers} k={k}", draft, k) for k in a.k[:1]]
    for name, prompt in TASKS.items():
        ids = target.chat_ids([{"role": "user", "content": prompt}])
        base = None
        print(f"\n[{name}] prompt {len(ids)} tokens")
        print(f"{'method':<18} {'decode s':>9} {'tok/s':>7} {'speed-up':>9} {'same ids':>9} "
              f"{'accept':>7} {'tok/call':>9}")
        for label, spec, k in methods:
            times, result = [], None
            for _ in range(a.repeat):
                result, t = run(target, ids, a.tokens, spec, k)
                times.append(t)
            t = statistics.median(times)
            base = base or (t, result)
            stats = result.timing.get("speculative", {})
            proposed = stats.get("proposed", 0)
            rate = f"{stats.get('accepted', 0) / proposed:.2f}" if proposed else "-"
            per_call = (f"{stats['tokens'] / stats['calls']:.2f}" if stats.get("calls")
                        else "1.00")
            print(f"{label:<18} {t:>9.3f} {(len(result.ids) - 1) / t:>7.1f} "
                  f"{base[0] / t:>8.2f}x {str(result.ids == base[1].ids):>9} {rate:>7} "
                  f"{per_call:>9}")


if __name__ == "__main__":
    main()
