"""Bad requests and the server's limits: OpenAI-style JSON errors with 4xx codes, and the
server still serving afterwards. Oracle: OpenAI's error format (`{"error": {"message",
"type", "param", "code"}}`) as the official client parses it, the status codes of the
OpenAI API (400 bad request, 404 unknown model, 429 queue full), and Engine.generate for
the requests served after the errors."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
from serving import MODEL, reference, wait_until

from scredge.serve import ServerConfig, ServerThread


def _status_error(call) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    err = info.value
    assert set(err.body) >= {"message", "type", "param", "code"}  # the client unwraps "error"
    return err


@pytest.mark.parametrize("kw,status,param", [
    ({"model": "no-such-model"}, 404, "model"),
    ({"max_tokens": -1}, 400, "max_tokens"),
    ({"temperature": -0.5}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"n": 2}, 400, "n"),
    ({"seed": -3}, 400, "seed"),
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": [300, 1]}, 400, "prompt"),  # ids outside the vocabulary
])
def test_bad_parameters_are_4xx_json(client, engine, kw, status, param):
    """Each bad field is refused with its status and names the field; a good request
    right after is served exactly as alone."""
    args = {"model": MODEL, "prompt": "ok", "max_tokens": 5, **kw}
    err = _status_error(lambda: client.completions.create(**args))
    assert err.status_code == status
    assert err.body["param"] == param
    out = client.completions.create(model=MODEL, prompt="ok", max_tokens=8, temperature=0)
    assert out.choices[0].text == reference(engine, "ok", 8, temperature=0).text


def test_malformed_json_and_unknown_route(server, client):
    """A body that is not JSON: 400; an unknown path: 404; both as OpenAI error JSON."""
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        bad = http.post("/completions", content=b'{"model": "micro", "prompt": ',
                        headers={"content-type": "application/json"})
        assert bad.status_code == 400
        assert "not valid JSON" in bad.json()["error"]["message"]
        assert http.post("/completions", json=["a list"]).status_code == 400
        missing = http.get("/nowhere")
        assert missing.status_code == 404 and "error" in missing.json()
    assert client.models.list().data[0].id == MODEL


@pytest.fixture(scope="module")
def limited(engine):
    """A server for a context-limited model: 32 tokens of prompt and completion."""
    with ServerThread(engine, ServerConfig(MODEL, max_context=32)) as srv:
        yield srv


@pytest.fixture(scope="module")
def narrow(engine):
    """A server with one row, one waiting request, and requests cut after 1 s."""
    with ServerThread(engine, ServerConfig(MODEL, max_batch=1, max_queue=1,
                                           timeout_s=1.0)) as srv:
        yield srv


def test_prompt_too_long_for_the_context(limited, engine):
    """Prompt alone or prompt + max_tokens over 32 tokens: 400 context_length_exceeded; a
    default max_tokens is shortened to fit instead; a fitting request is served."""
    client = openai.OpenAI(base_url=limited.base_url, api_key="-", max_retries=0)
    for prompt, max_tokens in (("p" * 40, 1), ("p" * 20, 20)):
        err = _status_error(lambda p=prompt, m=max_tokens: client.completions.create(
            model=MODEL, prompt=p, max_tokens=m))
        assert (err.status_code, err.body["code"]) == (400, "context_length_exceeded")
    fitted = client.completions.create(model=MODEL, prompt="p" * 20, temperature=0)
    assert fitted.usage.completion_tokens == 12  # the default 16, shortened to 32 - 20
    assert fitted.choices[0].text == reference(engine, "p" * 20, 12, temperature=0).text


def test_full_queue_is_429(narrow, engine):
    """One row busy and one request waiting: the next is refused with 429
    rate_limit_exceeded; once the busy client leaves, the waiting one is served, equal
    to it alone."""
    client = openai.OpenAI(base_url=narrow.base_url, api_key="-", max_retries=0)
    waiting: list = []
    second = threading.Thread(target=lambda: waiting.append(client.completions.create(
        model=MODEL, prompt="w", max_tokens=10, temperature=0)))
    body = {"model": MODEL, "prompt": "busy", "max_tokens": 100_000, "stream": True}
    with httpx.Client(timeout=30) as http, http.stream(
            "POST", f"{narrow.base_url}/completions", json=body) as resp:
        lines = resp.iter_lines()  # kept: a dropped iterator closes the connection
        next(lines)
        second.start()
        wait_until(lambda: narrow.scheduler.queued == 1)
        err = _status_error(lambda: client.completions.create(model=MODEL, prompt="x",
                                                              max_tokens=3))
        assert (err.status_code, err.body["code"]) == (429, "rate_limit_exceeded")
    second.join(30)
    assert waiting[0].choices[0].text == reference(engine, "w", 10, temperature=0).text


def test_timeout_cuts_with_a_clear_end(narrow):
    """A request running past the 1 s timeout: non-streaming, a 504 request_timeout error;
    streaming, the tokens so far then an error event (no finish reason) and [DONE]."""
    client = openai.OpenAI(base_url=narrow.base_url, api_key="-", max_retries=0)
    err = _status_error(lambda: client.completions.create(model=MODEL, prompt="t",
                                                          max_tokens=100_000))
    assert (err.status_code, err.body["code"]) == (504, "request_timeout")
    body = {"model": MODEL, "prompt": "t", "max_tokens": 100_000, "stream": True}
    with httpx.Client(timeout=30) as http, http.stream(
            "POST", f"{narrow.base_url}/completions", json=body) as resp:
        events = [line for line in resp.iter_lines() if line.startswith("data:")]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][5:])["error"]["code"] == "request_timeout"
    assert all(json.loads(e[5:])["choices"][0]["finish_reason"] is None for e in events[:-2])
    out = client.completions.create(model=MODEL, prompt="t", max_tokens=4)
    assert out.usage.completion_tokens == 4  # still serving


def test_a_failing_decode_step_fails_its_batch_and_the_server_stays_up(client, engine,
                                                                       monkeypatch):
    """A backend failure in one decode step (injected once): that batch's request gets a
    500 server_error, the scheduler keeps running, and the next request equals alone."""
    make, calls = engine.runner.decoder, []

    def decoder(batch):  # the backend's decoders, their 3rd decode call failing
        dec = make(batch)
        step = dec.step

        def failing_once(ids, positions):
            if ids.shape[1] == 1:
                calls.append(1)
                if len(calls) == 3:
                    raise RuntimeError("injected backend failure")
            return step(ids, positions)

        dec.step = failing_once
        return dec

    monkeypatch.setattr(engine.runner, "decoder", decoder)
    err = _status_error(lambda: client.completions.create(model=MODEL, prompt="boom",
                                                          max_tokens=20))
    assert (err.status_code, err.body["type"]) == (500, "server_error")
    assert "injected backend failure" in err.body["message"]
    out = client.completions.create(model=MODEL, prompt="fine", max_tokens=12, temperature=0)
    assert out.choices[0].text == reference(engine, "fine", 12, temperature=0).text
