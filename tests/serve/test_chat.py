"""/v1/chat/completions: the folder's chat template, encoded as `Engine.chat` encodes it, or
an OpenAI-style 400 when there is none. Oracle: `Engine.render_chat` + `Engine.generate` on
the rendered prompt alone (same seed), and OpenAI's chat response format as the client
parses it. The served test folder is a byte model without a template: the rendering tests
use a stand-in template on the engine; the template itself is tested against transformers'
apply_chat_template in tests/runtime/test_hf_tokenizer.py."""

from __future__ import annotations

import openai
import pytest
from serving import MODEL, reference

from scredge.runtime import Engine

HAS_RENDER = hasattr(Engine, "render_chat")
needs_render = pytest.mark.skipif(not HAS_RENDER, reason="Engine.render_chat (chat templates) "
                                  "is not in this branch; it comes with the tokenizer work")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]


def test_without_a_template_chat_is_a_400(client, engine):
    """A folder (or an engine) without a chat template: 400 invalid_request_error that
    says so; completions keep working."""
    if HAS_RENDER:  # with render_chat, only a folder without a template is refused
        try:
            engine.render_chat(MESSAGES)
            pytest.skip("the served folder has a chat template")
        except Exception:  # noqa: BLE001 - whatever it raises, the server must answer 400
            pass
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert "chat template" in info.value.body["message"]
    assert client.completions.create(model=MODEL, prompt="x", max_tokens=2).usage


def test_bad_messages_are_a_400(client):
    """messages missing, empty, or without roles: 400 naming 'messages'."""
    for messages in ([], [{"content": "no role"}], [{"role": "user", "content": 3}]):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)
        assert info.value.body["param"] == "messages"


@needs_render
@pytest.mark.parametrize("kw", [{"temperature": 0}, {"temperature": 0.8, "seed": 4}])
def test_chat_equals_generate_on_the_rendered_prompt(client, engine, kw):
    """Non-streaming chat: the assistant message equals Engine.generate on the template's
    rendering of the messages, alone, with the same seed."""
    try:
        prompt = engine.render_chat(MESSAGES)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"the served folder has no chat template: {exc}")
    ref = reference(engine, prompt, 20, **kw)
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, **kw)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == ref.text
    assert out.choices[0].finish_reason == ref.finish_reason
    assert out.usage.prompt_tokens == ref.prompt_tokens


@needs_render
def test_chat_stream_equals_generate(client, engine):
    """Streaming chat: a first delta with the role, content deltas that concatenate to the
    rendered prompt's Engine.generate text, a last chunk with finish reason and usage."""
    try:
        prompt = engine.render_chat(MESSAGES)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"the served folder has no chat template: {exc}")
    ref = reference(engine, prompt, 20, temperature=0.7, seed=9)
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20,
                                                 temperature=0.7, seed=9, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ref.text
    assert chunks[-1].choices[0].finish_reason == ref.finish_reason
    assert chunks[-1].usage.completion_tokens >= 1


def _plain_template(messages: list[dict]) -> str:
    """A stand-in for a folder's chat template (role: content lines, assistant turn open)."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def test_chat_path_with_a_stand_in_template(client, engine, monkeypatch):
    """The server's chat path (rendering through Engine.chat_ids, streaming and not, chat
    response format) with a stand-in `render_chat` on this engine. Oracle: Engine.generate
    on the stand-in's rendering, alone, same seed."""
    monkeypatch.setattr(engine, "render_chat", _plain_template, raising=False)
    prompt = _plain_template(MESSAGES)
    ref = reference(engine, prompt, 16, temperature=0.9, seed=3)
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16,
                                         temperature=0.9, seed=3)
    assert out.choices[0].message.content == ref.text
    assert out.usage.prompt_tokens == len(prompt.encode())
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16,
                                                 temperature=0.9, seed=3, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ref.text
    assert chunks[-1].choices[0].finish_reason == ref.finish_reason
