"""/v1/completions, /v1/models and /health through the official `openai` client. Oracle:
`Engine.generate` on the same prompt alone with the same seed and parameters (greedy and
sampled), and OpenAI's response format as the client parses it."""

from __future__ import annotations

import httpx
import pytest
from serving import MODEL, reference

CASES = [  # prompt, max_tokens, OpenAI parameters (ours in extra_body)
    ("Once upon a time", 24, {"temperature": 0}),
    ("The", 40, {"temperature": 0.9, "seed": 7}),
    ("A much longer prompt that runs past the window", 30,
     {"temperature": 0.8, "top_p": 0.9, "seed": 1, "extra_body": {"top_k": 40}}),
    ("Hi", 30, {"temperature": 0.7, "seed": 5, "extra_body": {"repetition_penalty": 1.3}}),
    ("Stop here", 60, {"temperature": 0, "stop": ["e", "zz"]}),
]


@pytest.mark.parametrize("prompt,max_tokens,kw", CASES)
def test_completion_equals_generate_alone(client, engine, prompt, max_tokens, kw):
    """Non-streaming: text, finish reason and usage equal Engine.generate's for it alone."""
    ref = reference(engine, prompt, max_tokens, **kw)
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, **kw)
    choice = out.choices[0]
    assert choice.text == ref.text
    assert choice.finish_reason == ref.finish_reason
    assert out.usage.prompt_tokens == ref.prompt_tokens == len(prompt.encode())
    if ref.finish_reason == "length":
        assert out.usage.completion_tokens == max_tokens
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_stop_string_cuts_the_text(client, engine):
    """A stop string seen in the greedy output ends the text just before it. Oracle: the
    unstopped greedy text, cut at the stop's first occurrence."""
    full = reference(engine, "Stop here", 60, temperature=0).text
    stop = full[10:12]
    out = client.completions.create(model=MODEL, prompt="Stop here", max_tokens=60,
                                    temperature=0, stop=stop)
    assert out.choices[0].text == full[:full.find(stop)]
    assert out.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("prompt,max_tokens,kw", CASES[1:3] + CASES[4:])
def test_stream_equals_generate_alone(client, engine, prompt, max_tokens, kw):
    """Streaming: the pieces concatenate to Engine.generate's text; only the last event has
    a finish reason, and it carries the usage."""
    ref = reference(engine, prompt, max_tokens, **kw)
    events = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens,
                                            stream=True, **kw))
    assert "".join(e.choices[0].text for e in events) == ref.text
    assert [e.choices[0].finish_reason for e in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1].choices[0].finish_reason == ref.finish_reason
    assert events[-1].usage.prompt_tokens == ref.prompt_tokens


def test_token_id_prompt(client, engine):
    """A prompt of token ids is served as the same ids given to Engine.generate."""
    ids = [72, 101, 108, 108, 111]
    ref = engine.generate(ids, 12, temperature=0)
    out = client.completions.create(model=MODEL, prompt=ids, max_tokens=12, temperature=0)
    assert out.choices[0].text == ref.text


def test_models_and_health(client, server):
    """GET /v1/models lists the served id; /health says ok with the scheduler's counts."""
    assert [m.id for m in client.models.list().data] == [MODEL]
    health = httpx.get(f"http://{server.host}:{server.port}/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert {"running", "queued"} <= set(health.json())


def test_zero_max_tokens_is_an_empty_completion(client):
    """max_tokens 0: no token, finish 'length', the prompt still counted."""
    out = client.completions.create(model=MODEL, prompt="abc", max_tokens=0)
    assert out.choices[0].text == ""
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (3, 0)
