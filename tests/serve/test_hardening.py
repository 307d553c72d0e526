"""Issue #30 class 7: what a hostile or careless client can do to the server. Bodies are
bounded (413) and parsed by scredge's bounded JSON parser (400s), prompts are prepared off
the event loop, prefill is skipped for requests already gone and cut between its chunks for
those that go during it, and /health sees a stall."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from serving import MODEL, reference, wait_until

from scredge.limits import MAX_JSON_DEPTH, MAX_REQUEST_BODY_BYTES
from scredge.serve import ServerConfig, ServerThread
from scredge.serve.scheduler import Scheduler

SMALL_BODY = 1 << 16


@pytest.fixture(scope="module")
def guarded(engine):
    """Small limits: 64 KiB bodies, 1 s per request, /health stalled after 0.3 s."""
    with ServerThread(engine, ServerConfig(MODEL, max_batch=4, timeout_s=1.0, stall_s=0.3,
                                           max_body_bytes=SMALL_BODY)) as srv:
        yield srv


class BlockedPrefill:
    """The backend's decoders, with the first prefill (a call of more than one position)
    held until `release` and every prefilled prompt recorded (a test double)."""

    def __init__(self, engine, monkeypatch) -> None:
        self.make, self.gate, self.entered = engine.runner.decoder, threading.Event(), \
            threading.Event()
        self.prompts: list[bytes] = []
        monkeypatch.setattr(engine.runner, "decoder", self.decoder)

    def decoder(self, batch):
        dec = self.make(batch)
        step = dec.step

        def held(ids, positions):
            if ids.shape[1] > 1:
                self.prompts += [bytes(row.tolist()) for row in ids]
                if not self.entered.is_set():
                    self.entered.set()
                    assert self.gate.wait(30), "the test never released the prefill"
            return step(ids, positions)

        dec.step = held
        return dec


def _post_json(url: str, raw: bytes, **kw) -> httpx.Response:
    return httpx.post(url, content=raw, headers={"content-type": "application/json"},
                      timeout=30, **kw)


def test_oversized_body_is_413_by_length_and_by_stream(guarded, engine):
    """Oracle: the configured limit (64 KiB) and RFC 9110's 413. A body declared larger is
    refused before it is read; a chunked one (no Content-Length) once it passes the limit;
    one just under the limit is served as alone."""
    url = f"{guarded.base_url}/completions"
    big = b'{"model": "micro", "prompt": "' + b"a" * SMALL_BODY + b'"}'
    declared = _post_json(url, big)
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "request_too_large"

    def chunks():
        for i in range(0, len(big), 4096):
            yield big[i:i + 4096]

    streamed = _post_json(url, chunks())
    assert streamed.status_code == 413
    fits = _post_json(url, b'{"model": "micro", "prompt": "ok", "max_tokens": 6, '
                           b'"temperature": 0, "padding": "' + b"x" * (SMALL_BODY - 200)
                      + b'"}')
    assert fits.status_code == 200
    assert fits.json()["choices"][0]["text"] == reference(engine, "ok", 6, temperature=0).text


def test_lone_surrogates_and_deep_nesting_are_400(guarded):
    """Oracle: RFC 8259 section 8.2 (a lone surrogate escape is not a Unicode string) and
    MAX_JSON_DEPTH: each such body is a 400 invalid_request_error, never a 500."""
    url = f"{guarded.base_url}/chat/completions"
    bodies = [
        b'{"model": "micro", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b'{"model": "micro", "messages": [{"role": "user", "content": "a\\udfff b"}]}',
        b'{"model": "micro", "messages": [{"role": "\\ud83d", "content": "x"}]}',
        b'{"model": "micro", "messages": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        b'{"model": "micro", "messages": [{"role": "user", "content": "x", "meta": '
        + b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1) + b"}]}",
        b'{"model": "micro", "prompt": "\xff\xfe"}',  # not UTF-8
    ]
    for raw in bodies:
        resp = _post_json(url, raw)
        assert resp.status_code == 400, raw[:80]
        assert resp.json()["error"]["type"] == "invalid_request_error"


def _plain_template(messages: list[dict]) -> str:
    """A stand-in chat template (the served byte folder has none), as test_chat's."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def test_logprobs_false_is_accepted_true_is_refused(client, engine, monkeypatch):
    """Oracle: OpenAI's API, where chat's logprobs=false is the default: the answer with it
    equals Engine.generate on the rendered prompt alone; logprobs=true (not implemented)
    is a 400 naming the field, and so is completions' logprobs=0 (a request for them)."""
    monkeypatch.setattr(engine, "render_chat", _plain_template, raising=False)
    msgs = [{"role": "user", "content": "hi"}]
    out = client.chat.completions.create(model=MODEL, messages=msgs, logprobs=False,
                                         max_tokens=5, temperature=0)
    want = reference(engine, _plain_template(msgs), 5, temperature=0).text
    assert out.choices[0].message.content == want
    for call in (lambda: client.chat.completions.create(model=MODEL, messages=msgs,
                                                        logprobs=True, max_tokens=5),
                 lambda: client.completions.create(model=MODEL, prompt="lp", max_tokens=5,
                                                   logprobs=0)):
        with pytest.raises(openai.BadRequestError) as info:
            call()
        assert info.value.body["param"] == "logprobs"


def test_a_20_mb_body_does_not_hold_up_other_requests(server, engine, monkeypatch):
    """Oracle: ordering, not wall time. While a 20 MB body is refused (413, the default
    limit) and another request's prompt is being tokenized (a tokenizer double that takes
    1.5 s), a small request sent after both completes before the slow one returns."""
    url = f"{server.base_url}/completions"
    slow_started, encode = threading.Event(), engine.tokenizer.encode

    def slow_encode(text, add_special_tokens=True):
        if text == "slow":
            slow_started.set()
            time.sleep(1.5)
        return encode(text, add_special_tokens)

    monkeypatch.setattr(engine.tokenizer, "encode", slow_encode)
    done: dict[str, float] = {}
    big = b'{"model": "micro", "prompt": "' + b"z" * (20 << 20) + b'"}'
    assert len(big) > MAX_REQUEST_BODY_BYTES

    def send(name, raw):
        resp = _post_json(url, raw)
        done[name] = time.perf_counter()
        done[name + " status"] = resp.status_code

    threads = [threading.Thread(target=send, args=("huge", big)),
               threading.Thread(target=send, args=("slow", b'{"model": "micro", "prompt": '
                                                   b'"slow", "max_tokens": 2}'))]
    for t in threads:
        t.start()
    assert slow_started.wait(20)
    send("small", b'{"model": "micro", "prompt": [1, 2, 3], "max_tokens": 4}')
    for t in threads:
        t.join(30)
    assert (done["huge status"], done["slow status"], done["small status"]) == (413, 200, 200)
    assert done["small"] < done["slow"]


def test_prefill_is_skipped_for_a_client_gone_and_a_request_timed_out(guarded, engine,
                                                                       monkeypatch):
    """Oracle: the prompts the backend prefilled (a recording double). With the first
    prefill held, a streaming client that leaves and a request whose 1 s timeout passes
    while queued are never prefilled; the timed-out one gets 504; the server goes on."""
    blocked = BlockedPrefill(engine, monkeypatch)
    sched, url = guarded.scheduler, guarded.base_url
    skipped = sched.skipped
    results: dict[str, int] = {}

    def send(name, body):
        results[name] = httpx.post(f"{url}/completions", json=body, timeout=30).status_code

    first = threading.Thread(target=send, args=("first", {
        "model": MODEL, "prompt": "held back", "max_tokens": 2}))
    first.start()
    assert blocked.entered.wait(20)
    late = threading.Thread(target=send, args=("late", {
        "model": MODEL, "prompt": "too late!", "max_tokens": 2}))
    late.start()
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{url}/completions", json={
            "model": MODEL, "prompt": "gone away", "max_tokens": 2, "stream": True}):
        wait_until(lambda: len(sched._queue.queue) == 2)
    wait_until(lambda: any(t.cancelled.is_set() for t in list(sched._queue.queue)))
    time.sleep(1.1)  # the queued "too late!" passes its 1 s timeout
    blocked.gate.set()
    first.join(30)
    late.join(30)
    wait_until(lambda: sched.skipped == skipped + 2)
    assert results["late"] == 504 and results["first"] in (200, 504)
    assert blocked.prompts == [b"held back"]
    out = httpx.post(f"{url}/completions", json={"model": MODEL, "prompt": "after",
                                                   "max_tokens": 3, "temperature": 0},
                     timeout=30).json()
    assert out["choices"][0]["text"] == reference(engine, "after", 3, temperature=0).text


def test_a_running_prefill_is_cut_when_its_client_leaves_or_its_time_runs_out(
        guarded, engine, monkeypatch):
    """Oracle: the prefill calls the backend ran (a recording double) against the prompt's
    chunk count (3000 tokens are 6 chunks of PREFILL_CHUNK = 512). With the first chunk
    held, a streaming client that leaves, and then a request whose 1 s timeout passes:
    each prefill stops after that one chunk (cut between chunks), the timed-out one gets
    504, /health is 200 afterwards and the next request equals Engine.generate alone."""
    from scredge.runtime.decoding import PREFILL_CHUNK
    from scredge.serve.scheduler import Ticket

    sched, url = guarded.scheduler, guarded.base_url
    prompt = "A" * 3000
    assert -(-len(engine.tokenizer.encode(prompt)) // PREFILL_CHUNK) >= 6
    left, cancel = threading.Event(), Ticket.cancel
    monkeypatch.setattr(Ticket, "cancel", lambda self: (cancel(self), left.set()))
    cut = sched.cut_prefills

    blocked = BlockedPrefill(engine, monkeypatch)
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{url}/completions", json={
            "model": MODEL, "prompt": prompt, "max_tokens": 2, "stream": True}):
        assert blocked.entered.wait(20)
    assert left.wait(20)  # the server saw the client go
    blocked.gate.set()
    wait_until(lambda: sched.cut_prefills == cut + 1)
    assert len(blocked.prompts) == 1, "prefill went on after the client left"

    blocked = BlockedPrefill(engine, monkeypatch)
    status: list[int] = []
    t = threading.Thread(target=lambda: status.append(httpx.post(
        f"{url}/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 2},
        timeout=30).status_code))
    t.start()
    assert blocked.entered.wait(20)
    time.sleep(1.1)  # past the 1 s timeout, inside the first chunk
    blocked.gate.set()
    t.join(30)
    assert status == [504] and sched.cut_prefills == cut + 2
    assert len(blocked.prompts) == 1, "prefill went on past the timeout"
    wait_until(lambda: httpx.get(f"http://{guarded.host}:{guarded.port}/health",
                            timeout=10).status_code == 200)
    out = httpx.post(f"{url}/completions", json={"model": MODEL, "prompt": "after",
                                                   "max_tokens": 3, "temperature": 0},
                     timeout=30).json()
    assert out["choices"][0]["text"] == reference(engine, "after", 3, temperature=0).text


def test_health_is_503_while_the_scheduler_is_stalled(guarded, engine, monkeypatch):
    """Oracle: the config's stall_s (0.3 s). A prefill held past it with a request waiting:
    /health 503 "stalled" with the reason; released, 200 again. A scheduler whose thread is
    not running: the reason says so."""
    blocked = BlockedPrefill(engine, monkeypatch)
    health = f"http://{guarded.host}:{guarded.port}/health"
    assert httpx.get(health, timeout=10).status_code == 200
    t = threading.Thread(target=lambda: httpx.post(f"{guarded.base_url}/completions", json={
        "model": MODEL, "prompt": "stall", "max_tokens": 2}, timeout=30))
    t.start()
    try:
        assert blocked.entered.wait(20)
        time.sleep(0.5)
        stalled = httpx.get(health, timeout=10)
    finally:
        blocked.gate.set()
    assert stalled.status_code == 503
    assert stalled.json()["status"] == "stalled"
    assert "no progress" in stalled.json()["reason"]
    t.join(30)
    wait_until(lambda: httpx.get(health, timeout=10).status_code == 200)
    assert "not running" in Scheduler(engine).stalled(1.0)
