"""`scredge serve` as a process: SIGTERM drains (an in-flight request finishes, a longer
one is cut at the grace with a final error event), the listener closes, and the process
ends (uvicorn re-raises the signal after its shutdown); each request's timing was logged.
Oracle: the SSE events each client received, the exit status and the log lines."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from serving import MODEL, reference


def _stream(url: str, body: dict, events: list, first: threading.Event) -> None:
    with httpx.Client(timeout=60) as http, http.stream("POST", url, json=body) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:"):
                events.append(line[5:].strip())
                first.set()


def test_sigterm_finishes_in_flight_then_cuts_and_exits(served_folder, engine):
    proc = subprocess.Popen(
        [sys.executable, "-m", "scredge", "serve", str(served_folder), "--port", "0",
         "--shutdown-grace", "3", "--model-name", MODEL, "--backend", "ort"],
        stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    port: list[int] = []
    ready = threading.Event()

    def read_log() -> None:
        for line in proc.stderr:
            log.append(line)
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)/v1", line)
            if found:
                port.append(int(found.group(1)))
                ready.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    try:
        assert ready.wait(120), "".join(log)
        url = f"http://127.0.0.1:{port[0]}/v1/completions"
        endless, short = [], []
        started = [threading.Event(), threading.Event()]
        threads = [threading.Thread(target=_stream, args=(url, body, out, ev)) for body, out, ev
                   in ((_body("endless", 100_000), endless, started[0]),
                       (_body("short", 250), short, started[1]))]
        for t in threads:
            t.start()
        assert all(ev.wait(30) for ev in started)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):  # the listener is closed
            httpx.get(f"http://127.0.0.1:{port[0]}/health", timeout=5)
        for t in threads:
            t.join(60)
        # uvicorn re-raises the signal once it has shut down gracefully: the parent sees it
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert short[-1] == "[DONE]" and json.loads(short[-2])["choices"][0]["finish_reason"]
    text = "".join(json.loads(e)["choices"][0]["text"] for e in short[:-1])
    assert text == reference(engine, "short", 250, seed=2).text  # finished during the grace
    assert endless[-1] == "[DONE]"
    assert json.loads(endless[-2])["error"]["code"] == "server_shutting_down"
    reader.join(10)
    timing = [line for line in log if "completion " in line and "ttft" in line]
    assert len(timing) == 2 and any("cut: the server is shutting down" in t for t in timing)


def _body(prompt: str, max_tokens: int) -> dict:
    return {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "seed": 2,
            "stream": True}
