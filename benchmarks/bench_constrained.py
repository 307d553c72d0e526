"""The cost of constrained output per token on SmolLM2-135M-Instruct's 49k vocabulary,
against a decode step of the same model, same run.

Mask cost per token = llguidance's mask for the row's state (`Constraint.allowed`: the
bitmask computed and unpacked to [V] bool), applying it to the logits (-inf elsewhere) and
advancing the parser (`accept`), timed on every token of a JSON-Schema output. The output
is produced by the model itself through `Engine.generate(response_format=...)` (greedy);
then, with the model out of the loop, the same ids are replayed through a fresh constraint
to time the grammar's share alone. Decode step = median per-token time of free greedy
generation (128 tokens, batch 1), and the constrained run's own per-token time beside it.

Goal (issue 31): mask cost < 10 % of a decode step. Then --openai N requests through the
`openai` client to `scredge serve`'s app (a ServerThread on this engine), chat with
response_format json_schema strict, sampled (temperature 0.8, seeds 0..N-1): how many
answers are valid JSON of the schema (goal: all).

    python benchmarks/bench_constrained.py [--work /tmp/smollm2] [--repeat 3]
    (prepares the artifact with benchmarks/smollm2.py: needs gguf, accelerate, torch)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"},
    "languages": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
    "city": {"type": "string"}}, "required": ["name", "age", "languages", "city"],
    "additionalProperties": False}
PROMPT = ("Describe a fictional software engineer as JSON with the fields name, age, "
          "languages (a list) and city.")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/smollm2"))
    ap.add_argument("--artifact", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--openai", type=int, default=8, help="requests through the client")
    a = ap.parse_args()
    from scredge.runtime import Engine
    from scredge.runtime.constrained import Grammar, Grammars

    if a.artifact is None:
        from smollm2 import artifact
        a.artifact = artifact(a.work)
    engine = Engine.load(a.artifact, backend="ort", device="cpu", threads=a.threads)
    V = engine.config.vocab_size
    t0 = time.perf_counter()
    grammars = Grammars(engine.tokenizer, V)
    t_vocab = time.perf_counter() - t0
    compiled = grammars.compile(Grammar.json_schema(SCHEMA))
    messages = [{"role": "user", "content": PROMPT}]
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA,
                                                  "strict": True}}
    free_step, cons_step, mask, outputs = [], [], [], []
    for _ in range(a.repeat):
        free = engine.chat(messages, 128, temperature=0, ignore_eos=True)
        free_step.append(1 / free.timing["decode_tokens_per_s"])
        out = engine.chat(messages, 256, temperature=0, response_format=fmt)
        cons_step.append(1 / out.timing["decode_tokens_per_s"])
        outputs.append(out)
        row = grammars.constraint(compiled)
        logits = np.zeros(V, dtype=np.float32)
        per = []
        for t in out.ids:
            s = time.perf_counter()
            row(logits)
            row.accept(t)
            per.append(time.perf_counter() - s)
            logits[:] = 0
        mask.append(statistics.median(per))
    value = json.loads(outputs[-1].text)
    step, m = statistics.median(free_step), statistics.median(mask)
    print(f"model: {a.artifact} (V = {V}); llguidance vocabulary built in {t_vocab:.2f} s")
    print(f"constrained output ({len(outputs[-1].ids)} tokens, finish "
          f"{outputs[-1].finish_reason}): {outputs[-1].text}")
    print(f"valid JSON of the schema: {sorted(value) == sorted(SCHEMA['required'])}")
    print(f"decode step, free greedy (median of {a.repeat}): {step * 1e3:.2f} ms")
    print(f"decode step, constrained greedy (median):  {statistics.median(cons_step) * 1e3:.2f} ms")
    print(f"mask + apply + accept per token (median):  {m * 1e3:.3f} ms")
    print(f"mask cost / decode step: {100 * m / step:.3f} %  (goal < 10 %)")
    if a.openai:
        valid = through_openai(engine, messages, fmt, a.openai)
        print(f"openai client, chat + response_format json_schema strict, temperature 0.8, "
              f"{a.openai} seeds: {valid}/{a.openai} schema-valid JSON")


def through_openai(engine, messages, fmt, n: int) -> int:
    import openai

    from scredge.serve import ServerConfig, ServerThread

    valid = 0
    with ServerThread(engine, ServerConfig("smollm2")) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", timeout=600)
        for seed in range(n):
            out = client.chat.completions.create(model="smollm2", messages=messages,
                                                 max_tokens=256, temperature=0.8, seed=seed,
                                                 response_format=fmt)
            try:
                value = json.loads(out.choices[0].message.content)
                valid += sorted(value) == sorted(SCHEMA["required"]) and isinstance(
                    value["age"], int) and all(isinstance(x, str) for x in value["languages"])
            except ValueError:
                print("  invalid:", out.choices[0].message.content[:200])
    return valid


if __name__ == "__main__":
    main()
