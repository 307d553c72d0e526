"""response_format (OpenAI's json_schema with strict, json_object) on completions and chat,
streamed or not, and a server that speculates. Oracles: json.loads + the schema on what the
openai client receives; Engine.generate with the same response_format (and speculation) on
the prompt alone; OpenAI-style 400s for a bad schema or format and for n > 1."""

from __future__ import annotations

import json

import openai
import pytest
from serving import MODEL

pytest.importorskip("llguidance", reason="llguidance (ort extra) not installed")

SCHEMA = {"type": "object", "properties": {"word": {"type": "string", "maxLength": 6},
                                           "n": {"type": "integer", "minimum": 0,
                                                 "maximum": 99}},
          "required": ["word", "n"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA,
                                                 "strict": True}}


def _check(text: str) -> None:
    value = json.loads(text)
    assert set(value) == {"word", "n"} and len(value["word"]) <= 6 and 0 <= value["n"] <= 99


@pytest.mark.parametrize("stream", [False, True])
def test_completions_json_schema(client, engine, stream):
    """Streamed or not, greedy and sampled: schema-valid JSON equal to Engine.generate's
    with the same response_format (the client sends it in extra_body: its completions
    call has no such argument)."""
    for kw in (dict(temperature=0), dict(temperature=0.8, seed=3)):
        ref = engine.generate("Once upon", 300, response_format=FORMAT, **kw)
        out = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=300,
                                        stream=stream, extra_body={"response_format": FORMAT},
                                        **kw)
        text = "".join(c.choices[0].text for c in out) if stream else out.choices[0].text
        assert text == ref.text
        _check(text)


def test_chat_json_schema_strict(client, engine, monkeypatch):
    """Chat with json_schema strict (the client's own response_format argument)."""
    monkeypatch.setattr(engine, "render_chat",
                        lambda messages, **kw: "".join(m["content"] for m in messages) + "\n",
                        raising=False)
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user",
                                                                 "content": "JSON"}],
                                         max_tokens=300, temperature=0, response_format=FORMAT)
    _check(out.choices[0].message.content)


def test_chat_streamed_json_schema_and_json_object(client, engine, monkeypatch):
    """Chat (a stand-in template: the served byte model has none), streamed, equals the
    same request not streamed: schema-valid JSON; json_object gives a JSON object (or,
    cut by max_tokens, finish 'length')."""
    monkeypatch.setattr(engine, "render_chat",
                        lambda messages, **kw: "".join(m["content"] for m in messages) + "\n",
                        raising=False)
    messages = [{"role": "user", "content": "An object, please."}]
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=300,
                                         temperature=0, response_format=FORMAT)
    chunks = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=300,
                                            temperature=0, stream=True, response_format=FORMAT)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == out.choices[0].message.content
    _check(text)
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1000,
                                         temperature=0.7, seed=1,
                                         response_format={"type": "json_object"})
    choice = out.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
    else:
        assert choice.finish_reason == "length" and choice.message.content.startswith("{")


def test_bad_formats_are_400(client):
    """An invalid schema (llguidance's message), a format of another shape, and an unknown
    type: 400 naming response_format."""
    for fmt in ({"type": "json_schema", "json_schema": {"name": "x",
                                                         "schema": {"type": "objekt"}}},
                {"type": "json_schema"}, {"type": "yaml"}):
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model=MODEL, prompt="x", max_tokens=4,
                                      extra_body={"response_format": fmt})
        assert info.value.body["param"] == "response_format"


def test_speculative_server(engine):
    """A server started with speculative='ngram': greedy answers equal Engine.generate's
    without speculation (the ids are plain greedy's), with response_format too; n > 1 is
    a 400."""
    from scredge.serve import ServerConfig, ServerThread

    prompt = "abcabcabcabc abcabc"
    with ServerThread(engine, ServerConfig(MODEL, speculative="ngram")) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0,
                               timeout=60)
        out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40,
                                        temperature=0)
        assert out.choices[0].text == engine.generate(prompt, 40, temperature=0).text
        out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=300,
                                        temperature=0, extra_body={"response_format": FORMAT})
        assert out.choices[0].text == engine.generate(prompt, 300, temperature=0,
                                                      response_format=FORMAT).text
        _check(out.choices[0].text)
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, n=2)
