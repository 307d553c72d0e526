"""Helpers of the serving tests: the oracle (Engine.generate on one prompt alone)."""

from __future__ import annotations

MODEL = "micro"  # the model id the test servers serve


def reference(engine, prompt, max_tokens: int, **kw):
    """What `Engine.generate` gives for this request alone, with the request's OpenAI
    parameters (and ours from `extra_body`) mapped onto its arguments."""
    extra = kw.get("extra_body") or {}
    stop = kw.get("stop") or []
    return engine.generate(prompt, max_tokens, temperature=kw.get("temperature", 1.0),
                           top_p=kw.get("top_p", 1.0), top_k=extra.get("top_k", 0),
                           repetition_penalty=extra.get("repetition_penalty", 1.0),
                           seed=kw.get("seed", 0), stop=[stop] if isinstance(stop, str) else stop)
