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



def wait_until(cond, timeout_s: float = 20.0) -> None:
    """Poll `cond` until it holds; fail the test after `timeout_s`."""
    import time

    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.002)

PROMPTS = ["a", "Once upon a time there was", "The quick brown fox jumps over the lazy dog",
           "Hello, world", "x" * 40, "Why?", "Numbers: 1 2 3 4", "tea"]


def sixteen_requests(i: int) -> tuple[str, int, dict, bool]:
    """The i-th of 16 requests: lengths, budgets and parameters all differ."""
    kw: dict = {"seed": 100 + i}
    if i % 4 == 0:
        kw["temperature"] = 0
    elif i % 4 == 1:
        kw.update(temperature=0.8, top_p=0.9)
    elif i % 4 == 2:
        kw.update(temperature=1.1, extra_body={"top_k": 20, "repetition_penalty": 1.2})
    else:
        kw.update(temperature=0.6, stop=["e"])
    return PROMPTS[i % len(PROMPTS)], 20 + 7 * i, kw, i % 2 == 0


def call_request(client, i: int) -> tuple[str, str, int]:
    """Send the i-th request through the openai client: (text, finish reason, prompt tokens)."""
    prompt, max_tokens, kw, stream = sixteen_requests(i)
    if not stream:
        out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, **kw)
        return out.choices[0].text, out.choices[0].finish_reason, out.usage.prompt_tokens
    events = list(client.completions.create(model=MODEL, prompt=prompt,
                                            max_tokens=max_tokens, stream=True, **kw))
    return ("".join(e.choices[0].text for e in events), events[-1].choices[0].finish_reason,
            events[-1].usage.prompt_tokens)


def sixteen_clients(client, engine) -> None:
    """The 16 requests at once through `client`: each equals its request alone."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda i: call_request(client, i), range(16)))
    for i, (text, finish, prompt_tokens) in enumerate(got):
        prompt, max_tokens, kw, _ = sixteen_requests(i)
        ref = reference(engine, prompt, max_tokens, **kw)
        assert (text, finish) == (ref.text, ref.finish_reason), f"request {i}"
        assert prompt_tokens == len(prompt)


def stream_events(url: str, body: dict, events: list, first) -> None:
    """POST a streaming request; each `data:` payload into `events`, `first` set on the
    first one."""
    import httpx

    with httpx.Client(timeout=120) as http, http.stream("POST", url, json=body) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:"):
                events.append(line[5:].strip())
                first.set()


class ServerProcess:
    """`python -m scredge serve ARGS` in a child process, its log read in a thread; `port`
    once the log says where it listens."""

    def __init__(self, args: list[str], env: dict | None = None) -> None:
        import re
        import subprocess
        import sys
        import threading

        self.proc = subprocess.Popen([sys.executable, "-m", "scredge", "serve", *args],
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.log: list[str] = []
        self.port: int | None = None
        self.ready = threading.Event()

        def read_log() -> None:
            for line in self.proc.stderr:
                self.log.append(line)
                found = re.search(r"listening on http://127\.0\.0\.1:(\d+)/v1", line)
                if found:
                    self.port = int(found.group(1))
                    self.ready.set()

        self.reader = threading.Thread(target=read_log, daemon=True)
        self.reader.start()

    def wait_ready(self, timeout_s: float) -> int:
        assert self.ready.wait(timeout_s), "".join(self.log[-40:])
        return self.port

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


def endless_and_short(url: str, wait_s: float) -> tuple[list, list, list]:
    """Two streams in threads, both started: an endless one (cut by a drain) and a short
    one (250 tokens, finishing within a few seconds' grace); (endless, short, threads)."""
    import threading

    endless, short = [], []
    started = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=stream_events, args=(url, body, out, ev))
               for body, out, ev in ((_drain_body("endless", 100_000), endless, started[0]),
                                     (_drain_body("short", 250), short, started[1]))]
    for t in threads:
        t.start()
    assert all(ev.wait(wait_s) for ev in started)
    return endless, short, threads


def check_drained(engine, endless: list, short: list) -> None:
    """The short stream finished during the grace, equal to its output alone; the endless
    one was cut with a final error event, then [DONE]."""
    import json

    assert short[-1] == "[DONE]" and json.loads(short[-2])["choices"][0]["finish_reason"]
    text = "".join(json.loads(e)["choices"][0]["text"] for e in short[:-1])
    assert text == reference(engine, "short", 250, seed=2).text
    assert endless[-1] == "[DONE]"
    assert json.loads(endless[-2])["error"]["code"] == "server_shutting_down"


def _drain_body(prompt: str, max_tokens: int) -> dict:
    return {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "seed": 2,
            "stream": True}
