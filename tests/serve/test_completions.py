"""/v1/completions, /v1/models and /health through the official `openai` client. Oracle:
`Engine.generate` on the same prompt alone with the same seed and parameters (greedy and
sampled), and OpenAI's response format as the client parses it."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from scripted_runner import ScriptedRunner
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


# every character Python's str.splitlines ends a line at (so httpx's iter_lines too)
LINE_BREAKS = "".join(c for c in map(chr, range(0x3000)) if len(f"a{c}b".splitlines()) == 2)


def test_stream_events_stay_one_line_whatever_splits_lines():
    """Streamed text holding each of LINE_BREAKS (a random byte model makes U+0085, U+2028
    and U+2029 now and then): every event reads as one `data:` line of JSON through httpx's
    iter_lines (which splits as str.splitlines does) and through the openai client's SSE
    decoder (CR and LF only), and the pieces concatenate to the text. Oracle: the scripted
    text itself; the line ends are str.splitlines' own."""
    from scredge.runtime import Engine
    from scredge.serve import ServerConfig, ServerThread

    assert {"\x85", "\u2028", "\u2029", "\x1c", "\n"} <= set(LINE_BREAKS)
    text = "".join(f"{c}{i}é" for i, c in enumerate(LINE_BREAKS))
    data = text.encode()
    body = {"model": MODEL, "prompt": "x", "max_tokens": len(data), "temperature": 0,
            "stream": True}
    with ServerThread(Engine(ScriptedRunner(data)), ServerConfig(MODEL)) as srv:
        with httpx.Client(timeout=30) as http, http.stream(
                "POST", f"{srv.base_url}/completions", json=body) as resp:
            lines = [line for line in resp.iter_lines() if line]
        client = openai.OpenAI(base_url=srv.base_url, api_key="-", max_retries=0, timeout=30)
        events = list(client.completions.create(model=MODEL, prompt="x", max_tokens=len(data),
                                                temperature=0, stream=True))
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == text
    assert "".join(e.choices[0].text for e in events) == text
    assert events[-1].choices[0].finish_reason == "length"
